"""Reading ids and labels straight out of shards through their DALI index (no JPEG is read)."""
from __future__ import annotations

import numpy as np

from shard_tools.layout import index_path, open_shard, read_index


def read_labels(tar_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 N, labels float32 N×37) of every sample of the given (train/val) shards."""
    ids, labels = [], []
    for tar in tar_paths:
        with open_shard(tar) as f:  # a local file, or an s3:// object fetched whole
            for sample in read_index(index_path(tar)):
                f32 = next((e for e in sample if e.ext == "f32"), None)
                if f32 is None:
                    raise ValueError(f"{tar}: sample {sample[0].key} has no labels (a test shard?)")
                f.seek(f32.offset)
                labels.append(np.frombuffer(f.read(f32.size), "<f4"))
                ids.append(int(sample[0].key))
    return np.array(ids, np.int64), np.stack(labels) if labels else np.zeros((0, 37), np.float32)
