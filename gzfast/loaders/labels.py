"""Reading ids and labels straight out of shards through their DALI index (no JPEG is read). Each shard
gets the loaders' check first (its index must cover the whole tar), and every label must be whole: a
damaged shard is named in one line, never a numpy traceback."""
from __future__ import annotations

import numpy as np

from shard_tools.layout import LayoutError, open_shard, read_index, shard_info


def read_labels(tar_paths: list[str], label_count: int = 37) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 N, labels float32 N×A) of every sample of the given (train/val) shards."""
    ids, labels = [], []
    width = 4 * label_count
    for tar in tar_paths:
        info = shard_info(tar)  # raises LayoutError on a missing, short or uncovered shard
        with open_shard(tar) as f:  # a local file, or an s3:// object fetched whole
            for sample in read_index(info.index):
                f32 = next((e for e in sample if e.ext == "f32"), None)
                if f32 is None:
                    raise LayoutError(f"{tar}: sample {sample[0].key} has no labels (a test shard?)")
                f.seek(f32.offset)
                data = f.read(f32.size)
                if f32.size != width or len(data) != width:
                    raise LayoutError(f"{tar}: sample {sample[0].key} holds {len(data)} bytes of labels, expected "
                                      f"{width} ({label_count} answers); re-run pack")
                labels.append(np.frombuffer(data, "<f4"))
                ids.append(int(sample[0].key))
    return np.array(ids, np.int64), np.stack(labels) if labels else np.zeros((0, label_count), np.float32)
