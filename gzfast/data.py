"""Loaders over shard lists: DALI on the GPU, the same DALI graph on the CPU, and a PIL baseline.

All three yield the same `Batch` (DESIGN §3): `images` N×3×H×W in channels-last memory, normalized with
ImageNet mean/std (fp16 from DALI on the GPU, float32 on the CPU), `labels` N×37 float32 (None for test
shards), `ids` N int64. Train mode augments (random rotation 0-360°, since galaxies have no up, a random
flip, optional zoom/shift) and drops the last partial batch; eval mode takes the center crop only and
yields every sample of its slice exactly once.

One loader is one epoch: `seed` and `epoch` fix the shard order, the shuffle and the augmentation, so a
resumed run sees the same data. Tiers are mixed within an epoch: the DALI reader reads tars in the given
order and shuffles only inside its `initial_fill` buffer, so train mode first interleaves the shards of
the different tier folders in proportion (`interleave_tiers`) and sizes the buffer to span several shards.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shard_tools.catalog import IMAGE_SIZE

LOADERS = ("dali-gpu", "dali-cpu", "pil")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCE_SIZE = IMAGE_SIZE[0]  # every packed JPEG is 424×424 (pack checks it)
SHUFFLE_BUFFER = 4096         # samples; spans ~8 shards of 500 so all tiers are in it at once


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor | None
    ids: torch.Tensor

    def __len__(self):
        return len(self.ids)


class LoaderError(RuntimeError):
    pass


def index_path(tar_path: str | os.PathLike) -> str:
    return str(tar_path)[:-4] + ".idx"


def shard_sample_count(tar_path: str | os.PathLike) -> int:
    """Samples in a shard, from the header line of its DALI index (`v1.2 N`)."""
    with open(index_path(tar_path)) as f:
        return int(f.readline().split()[1])


def has_labels(tar_path: str | os.PathLike) -> bool:
    """Train and val shards carry `.f32` labels, test shards do not (read off the index's first sample)."""
    with open(index_path(tar_path)) as f:
        f.readline()
        return " f32 " in f" {f.readline()} "


def interleave_tiers(paths: list[str], seed: int = 0, epoch: int = 0) -> list[str]:
    """Shuffles shards within each folder (tier), then merges the folders in proportion, so that any
    stretch of the list holds every tier at about its share of the whole."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        groups[str(Path(p).parent)].append(p)
    rng = np.random.default_rng([seed, epoch, 17])
    keyed = []
    for g, (folder, members) in enumerate(sorted(groups.items())):
        order = rng.permutation(len(members))
        offset = rng.random()
        # the k-th shard of a folder of n sits at (k + offset) / n: proportional spacing
        keyed += [((k + offset) / len(members), g, members[i]) for k, i in enumerate(order)]
    return [p for _, _, p in sorted(keyed)]


def batch_count(n_samples: int, batch_size: int, train: bool) -> int:
    return n_samples // batch_size if train else math.ceil(n_samples / batch_size)


def make_loader(name: str, shard_paths, *, train: bool, batch_size: int, image_size: int = 224,
                crop_size: int = 212, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                workers: int | None = None, zoom: float = 0.0, shift: float = 0.0,
                shuffle_buffer: int = SHUFFLE_BUFFER):
    """An iterable of `Batch` over `shard_paths` for one epoch; `len()` is the number of batches.

    `batch_size` is per process; `rank`/`world_size` give this process a disjoint slice of the samples
    (all slices together cover the list). `zoom` (relative crop-size jitter) and `shift` (relative center
    jitter) are optional extra train-time augmentations, off by default. `shuffle_buffer` is the train-mode
    shuffle window in samples."""
    if name not in LOADERS:
        raise LoaderError(f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")
    paths = [str(p) for p in shard_paths]
    if not paths:
        raise LoaderError("empty shard list")
    for p in paths:
        if not os.path.exists(p) or not os.path.exists(index_path(p)):
            raise LoaderError(f"{p}: shard or its .idx index missing (run `make shards` / shard_tools pack)")
    if not 0 < crop_size <= SOURCE_SIZE:
        raise LoaderError(f"crop_size {crop_size} must be in 1..{SOURCE_SIZE}")
    if not 0 <= rank < world_size:
        raise LoaderError(f"rank {rank} outside world size {world_size}")
    labelled = {has_labels(p) for p in paths}
    if len(labelled) > 1:
        raise LoaderError("shard list mixes labelled (train/val) and unlabelled (test) shards")
    if train:
        paths = interleave_tiers(paths, seed, epoch)
    spec = LoaderSpec(paths, train, batch_size, image_size, crop_size, rank, world_size, seed, epoch,
                      workers, zoom, shift, labelled.pop(), shuffle_buffer)
    if name == "pil":
        from .pil_loader import PILLoader
        return PILLoader(spec)
    from .dali_loader import DALILoader
    return DALILoader(spec, device="gpu" if name == "dali-gpu" else "cpu")


@dataclass(frozen=True)
class LoaderSpec:
    paths: list[str]
    train: bool
    batch_size: int
    image_size: int
    crop_size: int
    rank: int
    world_size: int
    seed: int
    epoch: int
    workers: int | None
    zoom: float
    shift: float
    labelled: bool
    shuffle_buffer: int = SHUFFLE_BUFFER

    @property
    def total_samples(self) -> int:
        return sum(shard_sample_count(p) for p in self.paths)

    def stream_seed(self) -> int:
        """A 31-bit seed for this (seed, epoch, rank) stream."""
        return int(np.random.default_rng([self.seed, self.epoch, self.rank]).integers(0, 2**31 - 1))

    def rotation_margin(self) -> int:
        """Side of the pre-crop that still covers the final crop at any rotation, zoom and shift."""
        side = self.crop_size * (1 + self.zoom) * (1 + 2 * self.shift) * math.sqrt(2)
        return min(SOURCE_SIZE, 2 * math.ceil(side / 2) + 2)
