"""Reading ids and labels straight out of shards through their DALI index (no JPEG is read)."""
from __future__ import annotations

import numpy as np

from shard_tools.verify import read_index

from .data import index_path


def read_labels(tar_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 N, labels float32 N×37) of every sample of the given (train/val) shards."""
    ids, labels = [], []
    for tar in tar_paths:
        with open(tar, "rb") as f:
            for sample in read_index(index_path(tar)):
                entries = {ext: (offset, size) for ext, offset, size, _ in sample}
                key = sample[0][3].partition(".")[0]
                if "f32" not in entries:
                    raise ValueError(f"{tar}: sample {key} has no labels (a test shard?)")
                off, size = entries["f32"]
                f.seek(off)
                labels.append(np.frombuffer(f.read(size), "<f4"))
                ids.append(int(key))
    return np.array(ids, np.int64), np.stack(labels) if labels else np.zeros((0, 37), np.float32)
