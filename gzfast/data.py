"""Loaders over shard lists: DALI on the GPU, the same DALI graph on the CPU, and a PIL baseline.

All three yield the same `Batch` (DESIGN §3) on the training device: `images` N×3×H×W in channels-last
memory, normalized with ImageNet mean/std (fp16 on a GPU for bf16 runs, float32 otherwise), `labels`
N×37 float32 on the device (None for test shards), `ids` N int64 on the CPU. Train mode augments (random
rotation 0-360°, since galaxies have no up, a random flip, optional zoom/shift) and drops the last
partial batch; eval mode takes the center crop only and yields every sample of its slice exactly once.
With `pad_last_batch` eval batches all have `batch_size` rows (a compiled model sees one shape): the
last one repeats its final sample, and `len(batch)` says how many rows are real.

One train loader is one epoch: `seed` and `epoch` fix the shard order, the shuffle and the augmentation,
so a resumed run sees the same data. An eval loader can be iterated again and again (its pipeline is
built once). Tiers are mixed within an epoch: the DALI reader reads tars in the given order and
shuffles only inside its `initial_fill` buffer, so train mode first interleaves the shards of the
different tier folders in proportion (`interleave_tiers`) and sizes the buffer to span several shards.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shard_tools.layout import IMAGE_SIDE, LayoutError, ShardInfo, shard_info

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

    def __len__(self):
        return len(self.ids) if self.valid is None else self.valid


class LoaderError(RuntimeError):
    pass


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


def max_rotation_crop() -> int:
    """The largest train-mode crop (no zoom or shift) whose every rotation stays inside the image."""
    return int(IMAGE_SIDE / math.sqrt(2))


def batch_count(n_samples: int, batch_size: int, train: bool) -> int:
    return n_samples // batch_size if train else math.ceil(n_samples / batch_size)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on a GPU (DALI has no bf16; autocast takes it from there), float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def make_loader(name: str, shard_paths, *, train: bool, batch_size: int, image_size: int = 224,
                crop_size: int = 212, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                workers: int | None = None, device=None, dtype: torch.dtype | None = None, zoom: float = 0.0,
                shift: float = 0.0, shuffle_buffer: int = SHUFFLE_BUFFER, pad_last_batch: bool = False):
    """An iterable of `Batch` over `shard_paths` for one epoch; `len()` is the number of batches.

    `batch_size` is per process; `rank`/`world_size` give this process a disjoint slice of the samples
    (all slices together cover the list). Batches arrive on `device` (default: the current GPU for
    dali-gpu, the CPU otherwise) with images of `dtype` (default: `default_dtype(device)`; fp32 runs on a
    GPU ask for float32). `zoom` (relative crop-size jitter) and `shift` (relative center jitter) are
    optional train-time augmentations, off by default. `shuffle_buffer` is the train-mode shuffle window
    in samples. `pad_last_batch` (eval) pads the last batch to `batch_size` rows."""
    if name not in LOADERS:
        raise LoaderError(f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")
    paths = [str(p) for p in shard_paths]
    if not paths:
        raise LoaderError("empty shard list")
    try:
        shards = {p: shard_info(p) for p in paths}
    except LayoutError as exc:
        raise LoaderError(str(exc)) from None
    if not 0 < crop_size <= IMAGE_SIDE:
        raise LoaderError(f"crop_size {crop_size} must be in 1..{IMAGE_SIDE}")
    if workers is not None and workers < 0:
        raise LoaderError(f"workers {workers} must be >= 0")
    if image_size < 1 or batch_size < 1:
        raise LoaderError(f"image_size {image_size} and batch_size {batch_size} must be >= 1")
    reach = rotation_reach(crop_size, zoom, shift)
    if train and reach > IMAGE_SIDE:
        raise LoaderError(f"a train-mode crop of {crop_size} px (zoom {zoom}, shift {shift}) reaches {reach:.0f} px "
                          f"when rotated, more than the {IMAGE_SIDE} px image: the corners would be blank. The largest "
                          f"crop without zoom or shift is {max_rotation_crop()} px")
    if not 0 <= rank < world_size:
        raise LoaderError(f"rank {rank} outside world size {world_size}")
    labelled = {s.labelled for s in shards.values()}
    if len(labelled) > 1:
        raise LoaderError("shard list mixes labelled (train/val) and unlabelled (test) shards")
    if name == "dali-gpu" and not torch.cuda.is_available():
        raise LoaderError("dali-gpu needs a CUDA GPU; on this machine use --loader dali-cpu or pil")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if name == "dali-gpu" else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtype or default_dtype(device)
    if dtype not in (torch.float16, torch.float32) or (device.type == "cpu" and dtype != torch.float32):
        raise LoaderError(f"images as {dtype} on {device}: the loaders give float32, or float16 on a GPU")
    if name == "dali-gpu" and device.type != "cuda":
        raise LoaderError(f"dali-gpu hands over batches on a GPU, not on {device}; use dali-cpu or pil")
    if train:
        paths = interleave_tiers(paths, seed, epoch)
    spec = LoaderSpec([shards[p] for p in paths], train, batch_size, image_size, crop_size, rank, world_size, seed,
                      epoch, workers, zoom, shift, labelled.pop(), shuffle_buffer, pad_last_batch and not train,
                      device, dtype)
    if name == "pil":
        from .pil_loader import PILLoader
        return PILLoader(spec)
    from .dali_loader import DALILoader
    return DALILoader(spec, decode_on_gpu=name == "dali-gpu")


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
        return min(IMAGE_SIDE, 2 * math.ceil(rotation_reach(self.crop_size, self.zoom, self.shift) / 2) + 2)

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


def find_undecodable(paths: list[str], budget_s: float = 20.0) -> str | None:
    """Where the first JPEG that PIL cannot decode is ("SHARD: sample ID"), for an error message when a
    loader failed to decode without saying which sample; None if none is found within `budget_s`."""
    import io
    import time

    from PIL import Image

    from shard_tools.layout import index_path, open_shard, read_index

    deadline = time.monotonic() + budget_s
    for path in paths:
        with open_shard(path) as f:
            for sample in read_index(index_path(path)):
                jpg = next((e for e in sample if e.ext == "jpg"), None)
                if jpg is None:
                    return f"{path}: sample {sample[0].key} has no .jpg"
                f.seek(jpg.offset)
                try:
                    with Image.open(io.BytesIO(f.read(jpg.size))) as im:
                        im.load()
                except Exception as exc:  # noqa: BLE001 - any decoder complaint marks the sample
                    return f"{path}: sample {jpg.key} does not decode ({exc})"
                if time.monotonic() > deadline:
                    return None
    return None
