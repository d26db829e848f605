"""The loaders' contract: the batch they yield, the spec they are built from, and the one check of it.

Every loader (`dali-gpu`, `dali-cpu`, `pil`, and the folder/catalogue readers of prediction) yields
`Batch`es on the training device: `images` N×3×H×W in channels-last memory, normalized with ImageNet
mean/std (`image_dtype`: fp16 on a GPU for bf16 runs, float32 otherwise), `labels` N×A float32 on the
device (A answers of the set's decision tree; None for unlabelled shards), `ids` N int64 on the CPU.
Train mode augments (random rotation 0-360°, since galaxies have no up, a random flip, optional
zoom/shift) and drops the last partial batch; eval mode takes the center crop only and yields every
sample of its slice exactly once. With `pad_last_batch` eval batches all have `batch_size` rows (a
compiled model sees one shape): the last one repeats its final sample, and `len(batch)` says how many
rows are real.

`check_spec` is the one place where crop, rank, device, dtype and the loader's name are validated: the
trainer, prediction and the benchmark all build their specs through it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shard_tools.errors import UserError
from shard_tools.layout import IMAGE_SIDE, ShardInfo

LOADERS = ("dali-gpu", "dali-cpu", "pil")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHUFFLE_BUFFER = 4096         # samples; spans ~8 shards of 500 so all tiers are in it at once


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor | None
    ids: torch.Tensor
    valid: int | None = None   # rows that are real samples (the rest pad a fixed-shape eval batch)
    counts: torch.Tensor | None = None  # N×A vote counts, for sets packed with counts

    def __len__(self):
        return len(self.ids) if self.valid is None else self.valid


class LoaderError(UserError, RuntimeError):
    """A loader that cannot be built or cannot read its shards; the message says which and what to do."""


def image_dtype(device: torch.device, precision: str = "bf16") -> torch.dtype:
    """What loaders hand over: fp16 on a GPU for bf16 runs (DALI has no bf16; autocast takes it from
    there), float32 otherwise."""
    return torch.float16 if torch.device(device).type == "cuda" and precision == "bf16" else torch.float32


def resolve_device(name: str, device=None) -> torch.device:
    """The device a loader hands over on: `device`, or the current GPU for dali-gpu and the CPU otherwise."""
    if device is None:
        gpu = name == "dali-gpu" and torch.cuda.is_available()  # without one, check() says what to use
        device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def interleave_tiers(paths: list[str], seed: int = 0, epoch: int = 0) -> list[str]:
    """Shuffles shards within each folder (tier), then merges the folders in proportion, so that any
    stretch of the list holds every tier at about its share of the whole."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        groups[str(Path(p).parent)].append(p)
    rng = np.random.default_rng([seed, epoch, 17])
    keyed = []
    for g, (_folder, members) in enumerate(sorted(groups.items())):
        order = rng.permutation(len(members))
        offset = rng.random()
        # the k-th shard of a folder of n sits at (k + offset) / n: proportional spacing
        keyed += [((k + offset) / len(members), g, members[i]) for k, i in enumerate(order)]
    return [p for _, _, p in sorted(keyed)]


def rotation_reach(crop_size: int, zoom: float = 0.0, shift: float = 0.0) -> float:
    """Diameter, in source pixels, of the circle that a crop covers at any rotation, zoom and shift."""
    return crop_size * (1 + zoom) * (1 + 2 * shift) * math.sqrt(2)


def max_rotation_crop(side: int = IMAGE_SIDE) -> int:
    """The largest train-mode crop (no zoom or shift) whose every rotation stays inside the image."""
    return int(side / math.sqrt(2))


def geometry_problem(crop_size: int, zoom: float, shift: float, train: bool, side: int = IMAGE_SIDE) -> str | None:
    """Why a crop cannot be taken from a `side` px image, or None: the one rule, for the trainer's config
    check and for every loader."""
    if not 0 < crop_size <= side:
        return f"crop_size {crop_size} must be in 1..{side} (the packed images are {side} px)"
    reach = rotation_reach(crop_size, zoom, shift)
    if train and reach > side:
        return (f"crop_size {crop_size} (zoom {zoom}, shift {shift}) cannot be rotated inside the {side} px image "
                f"without blank corners (it reaches {reach:.0f} px); the largest crop without zoom or shift is "
                f"{max_rotation_crop(side)} px")
    return None


def batch_count(n_samples: int, batch_size: int, train: bool) -> int:
    return n_samples // batch_size if train else math.ceil(n_samples / batch_size)


@dataclass(frozen=True)
class LoaderSpec:
    shards: list[ShardInfo]
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
    pad_last_batch: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    source_side: int = IMAGE_SIDE   # side of the packed (square) images
    label_count: int = 37           # answers of the set's decision tree
    has_counts: bool = False        # the samples carry vote counts (`.cnt`) beside the fractions

    def check(self, name: str) -> LoaderSpec:
        """Raises LoaderError naming what cannot work for loader `name`; returns the spec."""
        def need(ok, message):
            if not ok:
                raise LoaderError(message)
        need(name in LOADERS, f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")
        problem = geometry_problem(self.crop_size, self.zoom, self.shift, self.train, self.source_side)
        need(problem is None, problem)
        need(self.workers is None or self.workers >= 0, f"workers {self.workers} must be >= 0")
        need(self.image_size >= 1 and self.batch_size >= 1,
             f"image_size {self.image_size} and batch_size {self.batch_size} must be >= 1")
        need(0 <= self.rank < self.world_size, f"rank {self.rank} outside world size {self.world_size}")
        need(name != "dali-gpu" or torch.cuda.is_available(),
             "dali-gpu needs a CUDA GPU; on this machine use --loader dali-cpu or pil")
        need(name != "dali-gpu" or self.device.type == "cuda",
             f"dali-gpu hands over batches on a GPU, not on {self.device}; use dali-cpu or pil")
        need(self.dtype in (torch.float16, torch.float32) and (self.device.type == "cuda" or self.dtype == torch.float32),
             f"images as {self.dtype} on {self.device}: the loaders give float32, or float16 on a GPU")
        return self

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.shards]

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def stream_seed(self) -> int:
        """A 31-bit seed for this (seed, epoch, rank) stream."""
        return int(np.random.default_rng([self.seed, self.epoch, self.rank]).integers(0, 2**31 - 1))

    def rotation_crop_side(self) -> int:
        """Side of the centred pre-crop that still covers the final crop at any rotation, zoom and shift
        (make_loader refuses a crop whose reach exceeds the image)."""
        return min(self.source_side, 2 * math.ceil(rotation_reach(self.crop_size, self.zoom, self.shift) / 2) + 2)

    def valid_rows(self, n_samples: int, n_batches: int) -> list[int]:
        """Real rows per eval batch of this rank's `n_samples` (the last batch may be partial)."""
        return [min(self.batch_size, n_samples - i * self.batch_size) for i in range(n_batches)]


def normalize_on_device(uint8_nhwc: torch.Tensor, spec: LoaderSpec) -> torch.Tensor:
    """uint8 N×H×W×3 on the host -> normalized N×3×H×W channels-last on `spec.device`, of `spec.dtype`.
    uint8 crosses to the device (4× less than float32) and is normalized there, as timm's prefetcher does."""
    x = uint8_nhwc.to(spec.device, non_blocking=True).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN, device=spec.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=spec.device).view(1, 3, 1, 1) * 255
    return x.sub_(mean).div_(std).to(spec.dtype).contiguous(memory_format=torch.channels_last)


