"""The study-style baseline: webdataset + torch DataLoader workers + PIL, with DALI's geometry.

Shards are split across ranks (`shards[rank::world]`) and across workers by webdataset. Per-sample
augmentation is seeded by (seed, epoch, GalaxyID), so it does not depend on worker scheduling.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
from PIL import Image

from shard_tools.layout import IMAGE_SIDE

from .data import Batch, LoaderError, LoaderSpec, batch_count, normalize_on_device


def pil_transform(jpg: bytes, gid: int, spec: LoaderSpec) -> np.ndarray:
    """Decode, crop (+ rotate, flip, zoom, shift in train) and resize one image: HWC uint8."""
    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    c = float(spec.crop_size)
    if spec.train:
        rng = np.random.default_rng([spec.seed, spec.epoch, gid])
        side = spec.rotation_crop_side()
        lo = (IMAGE_SIDE - side) // 2
        img = img.crop((lo, lo, lo + side, lo + side)).rotate(rng.uniform(0, 360), Image.BILINEAR, fillcolor=0)
        if spec.zoom:
            c *= rng.uniform(1 - spec.zoom, 1 + spec.zoom)
        dx, dy = (rng.uniform(-spec.shift, spec.shift, 2) * spec.crop_size) if spec.shift else (0.0, 0.0)
        cx, cy = side / 2 + dx, side / 2 + dy
        img = img.resize((spec.image_size,) * 2, Image.BILINEAR, box=(cx - c / 2, cy - c / 2, cx + c / 2, cy + c / 2))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        lo = (IMAGE_SIDE - c) / 2
        img = img.resize((spec.image_size,) * 2, Image.BILINEAR, box=(lo, lo, lo + c, lo + c))
    return np.asarray(img)


class _Decode:
    """Picklable per-sample map for the workers."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec

    def __call__(self, sample):
        gid = int(np.frombuffer(sample["i64"], "<i8")[0])
        out = {"images": torch.from_numpy(pil_transform(sample["jpg"], gid, self.spec).copy()),
               "ids": torch.tensor(gid, dtype=torch.int64)}
        if self.spec.labelled:
            out["labels"] = torch.from_numpy(np.frombuffer(sample["f32"], "<f4").copy())
        return out


class PILLoader:
    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        rank_shards = spec.shards[spec.rank::spec.world_size]
        self.rank_paths = [sh.path for sh in rank_shards]
        counts = [sh.samples for sh in rank_shards]
        workers = spec.workers if spec.workers is not None else min(os.cpu_count() or 1, 8)
        self.workers = max(0, min(workers, len(self.rank_paths)))
        if spec.train:
            per_rank = spec.total_samples // spec.world_size  # same on every rank, as with DALI
            self.n_batches = batch_count(per_rank, spec.batch_size, True)
            if self.n_batches == 0:
                raise LoaderError(f"no full batch of {spec.batch_size} in {spec.total_samples} samples")
        else:  # each worker batches its own shards: count the partial batch of every worker
            k = max(self.workers, 1)
            self.n_batches = sum(math.ceil(sum(counts[w::k]) / spec.batch_size) for w in range(k))

    def __len__(self):
        return self.n_batches

    def prepare(self) -> PILLoader:
        """Nothing to build ahead: the workers start when iteration does (fork is cheap)."""
        return self

    def _dataset(self):
        import webdataset as wds
        s = self.spec
        if not self.rank_paths:
            return []
        ds = wds.WebDataset(self.rank_paths, shardshuffle=False, nodesplitter=None,
                            workersplitter=wds.split_by_worker, empty_check=False)
        if s.train:  # a second pass fills the epoch when a rank's shards hold fewer samples than its share
            ds = ds.repeat(2).shuffle(s.shuffle_buffer, initial=s.shuffle_buffer, seed=s.stream_seed())
        return ds.map(_Decode(s))

    def __iter__(self):
        s = self.spec
        loader = torch.utils.data.DataLoader(self._dataset(), batch_size=s.batch_size, num_workers=self.workers,
                                             drop_last=s.train, persistent_workers=False,
                                             multiprocessing_context="fork" if self.workers else None)
        for _, b in zip(range(self.n_batches), loader):
            valid = None
            if s.pad_last_batch:  # a fixed shape: repeat the last sample, say how many rows are real
                valid, short = len(b["ids"]), s.batch_size - len(b["ids"])
                # tensors only: webdataset carries the sample's `__key__` through the map as a list of strings
                b = {k: torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for k, v in b.items() if torch.is_tensor(v)}
            # uint8 crosses the worker boundary and onto the device (4x less than float): normalized there
            labels = b["labels"].to(s.device, non_blocking=True) if "labels" in b else None
            yield Batch(images=normalize_on_device(b["images"], s), labels=labels, ids=b["ids"], valid=valid)
