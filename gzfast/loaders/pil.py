"""The PyTorch/PIL loader, with DALI's geometry at the output's resolution.

Samples are read at their `.idx` offsets (local shards by pread; a shard on object storage fetched whole
with boto3), in an order fixed by (seed, epoch). Per-sample augmentation is seeded by (seed, epoch,
GalaxyID), so the stream depends on neither the worker count nor scheduling.
"""
from __future__ import annotations

import gc
import io
import math
import os
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from shard_tools.layout import LayoutError, is_remote, read_all, read_index

from .spec import Batch, LoaderError, LoaderSpec, normalize_on_device


def dct_scale(spec: LoaderSpec) -> int:
    """The largest JPEG DCT reduction (1, 2, 4 or 8) that still leaves the smallest crop at least as many
    pixels as the output has: decoding more than that only feeds pixels the resize throws away."""
    smallest_crop = spec.crop_size * (1 - spec.zoom if spec.train else 1)
    return next(s for s in (8, 4, 2, 1) if s == 1 or smallest_crop / s >= spec.image_size)


def decode(jpg: bytes, spec: LoaderSpec) -> tuple[Image.Image, float]:
    """The JPEG decoded at the DCT scale the output needs (PIL's draft mode: libjpeg-turbo scales in the
    DCT domain, which also low-passes); returns it and its pixels per source pixel."""
    img = Image.open(io.BytesIO(jpg))
    scale = dct_scale(spec)
    if scale > 1:
        img.draft("RGB", (math.ceil(spec.source_side / scale),) * 2)
    img = img.convert("RGB")
    return img, img.size[0] / spec.source_side


def pil_transform(jpg: bytes, gid: int, spec: LoaderSpec) -> np.ndarray:
    """Decode, crop (+ rotate, flip, zoom, shift in train) and resize one image: HWC uint8.

    Work happens at the output's resolution: the decode is reduced in the DCT domain, the region the crop
    can reach is resized (antialiased) to the output's scale first, and rotation, zoom, shift and crop
    are then one bilinear resampling of that small image."""
    img, f = decode(jpg, spec)
    out = spec.image_size
    if not spec.train:
        lo, c = (spec.source_side - spec.crop_size) / 2 * f, spec.crop_size * f
        return np.asarray(img.resize((out, out), Image.BILINEAR, box=(lo, lo, lo + c, lo + c)))
    rng = np.random.default_rng([spec.seed, spec.epoch, gid])
    angle = rng.uniform(0, 360)
    zoom = rng.uniform(1 - spec.zoom, 1 + spec.zoom) if spec.zoom else 1.0
    dx, dy = (rng.uniform(-spec.shift, spec.shift, 2) * out) if spec.shift else (0.0, 0.0)
    flip = rng.random() < 0.5
    # 1) when the output is smaller than the decode: the centred square that any rotation of the crop stays
    # inside, resized (antialiased) to the output's scale. `unit`: input pixels per output pixel after it.
    unit = spec.crop_size * f / out
    if unit > 1:
        side = spec.rotation_crop_side()
        lo, small = (spec.source_side - side) / 2 * f, round(side * out / spec.crop_size)
        img = img.resize((small, small), Image.BILINEAR, box=(lo, lo, lo + side * f, lo + side * f))
        unit = 1.0
    # 2) one affine resampling: output pixel q -> centre + shift + zoom * R(angle) (q - output centre)
    t = math.radians(angle)
    a, b = unit * zoom * math.cos(t), unit * zoom * math.sin(t)
    cx, cy = img.size[0] / 2 + dx * unit, img.size[1] / 2 + dy * unit
    h = out / 2
    img = img.transform((out, out), Image.AFFINE, (a, b, cx - a * h - b * h, -b, a, cy + b * h - a * h),
                        resample=Image.BILINEAR, fillcolor=0)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


class _IndexedSamples(torch.utils.data.Dataset):
    """Sample i of a list of shards, read at its `.idx` offsets (no tar parsing) and decoded. A shard on
    object storage is fetched whole, once, and kept while its samples are being read (the order visits a
    few shards at a time: `shuffle_groups`)."""

    def __init__(self, paths: list[str], entries: np.ndarray, spec: LoaderSpec):
        self.paths, self.entries, self.spec = paths, entries, spec
        self.files: dict[int, int] = {}  # opened lazily, so each worker process has its own descriptors
        self.fetched: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self):
        return len(self.entries)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        path = self.paths[shard]
        if is_remote(path):
            if shard not in self.fetched:
                self.fetched[shard] = read_all(path)
                while len(self.fetched) > REMOTE_SHARDS_KEPT:
                    self.fetched.popitem(last=False)
            self.fetched.move_to_end(shard)
            return self.fetched[shard][offset:offset + size]
        if shard not in self.files:
            self.files[shard] = os.open(path, os.O_RDONLY)
        return os.pread(self.files[shard], size, offset)

    def __getitem__(self, i):
        shard, jpg_offset, jpg_size, f32_offset, cnt_offset, gid = (int(v) for v in self.entries[i])
        try:
            jpg = self._read(shard, jpg_offset, jpg_size)
        except (LayoutError, OSError) as exc:
            raise LoaderError(f"{self.paths[shard]}: cannot read sample {gid} ({exc})") from None
        try:
            image = pil_transform(jpg, gid, self.spec)
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... on bad data
            raise LoaderError(f"{self.paths[shard]}: sample {gid} does not decode ({exc})") from None
        out = {"images": torch.from_numpy(image.copy()), "ids": torch.tensor(gid, dtype=torch.int64)}
        width = 4 * self.spec.label_count  # float32 per answer of the set's tree
        if f32_offset >= 0:
            out["labels"] = torch.from_numpy(np.frombuffer(self._read(shard, f32_offset, width), "<f4").copy())
        if cnt_offset >= 0:
            out["counts"] = torch.from_numpy(np.frombuffer(self._read(shard, cnt_offset, width), "<f4").copy())
        return out

    def __del__(self):
        for fd in self.files.values():
            os.close(fd)


REMOTE_SHARDS_KEPT = 16  # per process: a shuffle group's shards (4,096 samples in shards of 500) and more


def shuffle_groups(shard_sizes: list[int], buffer: int) -> list[list[int]]:
    """Consecutive shards grouped until a group holds at least `buffer` samples: the train order shuffles
    within a group, like DALI's reader shuffles within its buffer (the shard list is already interleaved
    by tier), so tiers mix from the first batch while only a few shards are being read at a time."""
    groups, current, count = [], [], 0
    for k, n in enumerate(shard_sizes):
        current.append(k)
        count += n
        if count >= buffer:
            groups.append(current)
            current, count = [], 0
    return groups + ([current] if current else [])


class PILLoader:
    """The pil loader. Samples are read at their `.idx` offsets and their order depends on (seed, epoch)
    alone: train mode shuffles within groups of shards holding `shuffle_buffer` samples, and gives each
    rank an equal contiguous share of that order; eval mode keeps the list's order, each rank a contiguous
    slice (as DALI splits). Decoding happens in the training process (`workers` 0) or in DataLoader
    workers, whose number does not change the stream."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        rows, first = [], []
        for k, shard in enumerate(spec.shards):
            first.append(len(rows))
            for sample in read_index(shard.index):
                parts = {e.ext: e for e in sample}
                f32 = parts["f32"].offset if "f32" in parts else -1
                cnt = parts["cnt"].offset if "cnt" in parts and spec.has_counts else -1
                rows.append((k, parts["jpg"].offset, parts["jpg"].size, f32, cnt, int(sample[0].key)))
        entries = np.array(rows, dtype=np.int64).reshape(-1, 6)
        total, world, bs = len(entries), spec.world_size, spec.batch_size
        if spec.train:
            share = total // world
            sizes = [sh.samples for sh in spec.shards]
            order = []
            for g, group in enumerate(shuffle_groups(sizes, spec.shuffle_buffer)):
                members = np.concatenate([np.arange(first[k], first[k] + sizes[k]) for k in group])
                order.append(np.random.default_rng([spec.seed, spec.epoch, 29, g]).permutation(members))
            mine = np.concatenate(order)[spec.rank * share:(spec.rank + 1) * share]  # the same order on every rank
            self.batches = [mine[i:i + bs].tolist() for i in range(0, share - bs + 1, bs)]
            if not self.batches:
                raise LoaderError(f"no full batch of {bs} in {total} samples on {world} process(es)")
        else:
            mine = np.arange(total * spec.rank // world, total * (spec.rank + 1) // world)
            self.batches = [mine[i:i + bs].tolist() for i in range(0, len(mine), bs)]
        self.dataset = _IndexedSamples([sh.path for sh in spec.shards], entries, spec)
        workers = spec.workers if spec.workers is not None else min(os.cpu_count() or 1, 8)
        self.workers = max(0, min(workers, len(self.batches)))

    def __len__(self):
        return len(self.batches)

    def prepare(self) -> PILLoader:
        """Nothing to build ahead: the workers start when iteration does (fork is cheap)."""
        return self

    def dataloader_options(self) -> dict:
        """How the DataLoader runs: feeding a GPU, its batches are pinned, so the copies to the device
        (`non_blocking`) overlap the step instead of waiting for it."""
        return {"num_workers": self.workers, "multiprocessing_context": "fork" if self.workers else None,
                "pin_memory": self.spec.device.type == "cuda"}

    def __iter__(self):
        if not self.batches:
            return
        options = self.dataloader_options()
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.batches, **options)
        s = self.spec
        for b in _reraise_as_loader_error(_start_workers(loader)):
            valid = None
            if s.pad_last_batch:  # a fixed shape: repeat the last sample, say how many rows are real
                valid, short = len(b["ids"]), s.batch_size - len(b["ids"])
                b = {k: torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for k, v in b.items()}
                if options["pin_memory"] and short:
                    b = {k: v.pin_memory() for k, v in b.items()}
            # uint8 crosses the worker boundary and onto the device (4x less than float): normalized there
            labels = b["labels"].to(s.device, non_blocking=True) if "labels" in b else None
            counts = b["counts"].to(s.device, non_blocking=True) if "counts" in b else None
            yield Batch(images=normalize_on_device(b["images"], s), labels=labels, ids=b["ids"], valid=valid, counts=counts)


def _start_workers(loader):
    """The DataLoader's batches, its workers forked with every object they inherit frozen out of their garbage
    collector: an unreachable object the parent had not yet collected (a DALI pipeline of an earlier loader, in
    a reference cycle) would otherwise be finalized in the worker, and a pipeline's shutdown there waits
    forever for threads that exist only in the parent."""
    gc.freeze()
    try:
        batches = iter(loader)  # the workers fork here
    finally:
        gc.unfreeze()  # the parent collects as before
    yield from batches


def _reraise_as_loader_error(batches):
    """A worker's exception arrives re-raised with its whole traceback as the message: keep its last line."""
    try:
        yield from batches
    except LoaderError as exc:
        raise LoaderError(str(exc).strip().splitlines()[-1].removeprefix("gzfast.loaders.spec.LoaderError: ")
                          .removeprefix("LoaderError: ")) from None
    except (OSError, ValueError, RuntimeError) as exc:  # a tar that cannot be read, a worker that died
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise LoaderError(f"pil loader failed reading its shards: {last}; check them with "
                          f"`python -m shard_tools verify OUT --decode`") from None
