"""Reading ids and labels straight out of shards through their DALI index (no JPEG is read)."""
from __future__ import annotations

import numpy as np

from .data import index_path


def read_labels(tar_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 N, labels float32 N×37) of every sample of the given (train/val) shards."""
    ids, labels = [], []
    for tar in tar_paths:
        with open(index_path(tar)) as idx, open(tar, "rb") as f:
            idx.readline()
            for line in idx:
                parts = line.split()
                entries = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
                if "f32" not in entries:
                    raise ValueError(f"{tar}: sample {parts[3]} has no labels (a test shard?)")
                off, size = entries["f32"]
                f.seek(off)
                labels.append(np.frombuffer(f.read(size), "<f4"))
                ids.append(int(parts[3].partition(".")[0]))
    return np.array(ids, np.int64), np.stack(labels) if labels else np.zeros((0, 37), np.float32)
