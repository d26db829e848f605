"""Loaders over shard lists: DALI on the GPU, the same DALI graph on the CPU, and a PIL baseline.

`make_loader` is the one way in; `spec.py` holds the batch contract and its one check, `pil.py` and
`dali.py` the two implementations, `folder.py` the readers of images that were never packed, `labels.py`
the reading of labels straight from the shards' indexes.

One train loader is one epoch: `seed` and `epoch` fix the shard order, the shuffle and the augmentation,
so a resumed run sees the same data. An eval loader can be iterated again and again (its pipeline is
built once). Tiers are mixed within an epoch: the DALI reader reads tars in the given order and
shuffles only inside its `initial_fill` buffer, so train mode first interleaves the shards of the
different tier folders in proportion (`interleave_tiers`) and sizes the buffer to span several shards.
"""
from __future__ import annotations

import torch

from shard_tools.layout import IMAGE_SIDE, LayoutError, shard_info

from .spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOADERS,
    SHUFFLE_BUFFER,
    Batch,
    LoaderError,
    LoaderSpec,
    geometry_problem,
    image_dtype,
    interleave_tiers,
    max_rotation_crop,
    resolve_device,
    rotation_reach,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LOADERS", "Batch", "LoaderError", "LoaderSpec", "geometry_problem",
           "image_dtype", "interleave_tiers", "make_loader", "max_rotation_crop", "rotation_reach"]


def make_loader(name: str, shard_paths, *, train: bool, batch_size: int, image_size: int = 224,
                crop_size: int = 212, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                workers: int | None = None, device=None, dtype: torch.dtype | None = None, zoom: float = 0.0,
                shift: float = 0.0, shuffle_buffer: int = SHUFFLE_BUFFER, pad_last_batch: bool = False,
                source_side: int = IMAGE_SIDE, label_count: int = 37, has_counts: bool = False,
                hw_decoder_load: float | None = None):
    """An iterable of `Batch` over `shard_paths` for one epoch; `len()` is the number of batches.

    `batch_size` is per process; `rank`/`world_size` give this process a disjoint slice of the samples
    (all slices together cover the list). Batches arrive on `device` (default: the current GPU for
    dali-gpu, the CPU otherwise) with images of `dtype` (default: fp16 on a GPU, float32 on the CPU;
    fp32 runs on a GPU ask for float32). `zoom` (relative crop-size jitter) and `shift` (relative center
    jitter) are optional train-time augmentations, off by default. `shuffle_buffer` is the train-mode
    shuffle window in samples. `pad_last_batch` (eval) pads the last batch to `batch_size` rows.
    `source_side`, `label_count` and `has_counts` describe the packed set (its manifest says them).
    `hw_decoder_load` (dali-gpu) is the share of the JPEGs given to the GPU's hardware decoder (None:
    DALI's default, 0.65)."""
    if name not in LOADERS:
        raise LoaderError(f"unknown loader {name!r}; choose one of {', '.join(LOADERS)}")
    paths = [str(p) for p in shard_paths]
    if not paths:
        raise LoaderError("empty shard list")
    try:
        shards = {p: shard_info(p) for p in paths}
    except LayoutError as exc:
        raise LoaderError(str(exc)) from None
    labelled = {s.labelled for s in shards.values()}
    if len(labelled) > 1:
        raise LoaderError("shard list mixes labelled (train/val) and unlabelled (test) shards")
    device = resolve_device(name, device)
    if train:
        paths = interleave_tiers(paths, seed, epoch)
    spec = LoaderSpec([shards[p] for p in paths], train, batch_size, image_size, crop_size, rank, world_size, seed,
                      epoch, workers, zoom, shift, labelled.pop(), shuffle_buffer, pad_last_batch and not train,
                      device, dtype or image_dtype(device), source_side, label_count, has_counts).check(name)
    if name == "pil":
        from .pil import PILLoader
        return PILLoader(spec)
    from .dali import DALILoader
    return DALILoader(spec, decode_on_gpu=name == "dali-gpu", hw_decoder_load=hw_decoder_load)
