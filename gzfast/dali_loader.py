"""The DALI loader: one graph for the GPU (`mixed` nvJPEG decode + gpu ops) and the CPU (cpu ops).

tar (+ .idx) -> decode -> [train: pre-crop -> random rotation 0-360° -> random crop box] -> crop+resize
in one `resize` with a region of interest -> crop_mirror_normalize (random flip in train) to HWC, which
the iterator hands over as N×3×H×W channels-last by a permute (no copy).
"""
from __future__ import annotations

import os

import torch

from .data import IMAGENET_MEAN, IMAGENET_STD, Batch, LoaderError, LoaderSpec, batch_count, index_path


def _import_dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except (ImportError, OSError) as exc:  # no wheel for this platform, or libraries that fail to load
        raise LoaderError(f"NVIDIA DALI cannot be loaded here ({exc}). Install nvidia-dali-cuda130 on Linux, "
                          f"or use the PyTorch/PIL loader: --loader pil") from exc
    return fn, pipeline_def, types, DALIGenericIterator, LastBatchPolicy


def _slice_size(total: int, rank: int, world: int) -> int:
    """Samples DALI's reader gives shard `rank` of `world` (contiguous ranges)."""
    return total * (rank + 1) // world - total * rank // world


class DALILoader:
    def __init__(self, spec: LoaderSpec, device: str):
        self.spec = spec
        self.device = device
        _import_dali()
        if device == "gpu" and not torch.cuda.is_available():
            raise LoaderError("dali-gpu needs a CUDA GPU; on this machine use --loader dali-cpu or pil")
        total = spec.total_samples
        if spec.train:
            self.n_samples = total // spec.world_size  # the same on every rank, so no rank waits on another
        else:
            self.n_samples = _slice_size(total, spec.rank, spec.world_size)
        self.n_batches = batch_count(self.n_samples, spec.batch_size, spec.train)
        if spec.train and self.n_batches == 0:
            raise LoaderError(f"{total} training samples on {spec.world_size} process(es) make no full batch of "
                              f"{spec.batch_size}")
        self.threads = spec.workers or (min(8, os.cpu_count() or 1) if device == "cpu" else 4)

    def __len__(self):
        return self.n_batches

    def build_pipeline(self):
        fn, pipeline_def, types, _, _ = _import_dali()
        s = self.spec
        gpu = self.device == "gpu"

        @pipeline_def(batch_size=s.batch_size, num_threads=self.threads,
                      device_id=torch.cuda.current_device() if gpu else None, seed=s.stream_seed(),
                      prefetch_queue_depth=2)
        def graph():
            exts = ["jpg", "i64"] + (["f32"] if s.labelled else [])
            dtypes = [types.UINT8, types.INT64] + ([types.FLOAT] if s.labelled else [])
            outs = fn.readers.webdataset(
                paths=s.paths, index_paths=[index_path(p) for p in s.paths], ext=exts, dtypes=dtypes,
                missing_component_behavior="error", random_shuffle=s.train,
                initial_fill=min(s.shuffle_buffer, max(1, self.n_samples)), seed=s.stream_seed(),
                shard_id=s.rank, num_shards=s.world_size, pad_last_batch=not s.train, name="reader")
            jpg, ids = outs[0], outs[1]
            images = fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)
            c = float(s.crop_size)
            if s.train:
                side = s.rotation_margin()
                if side < 424:
                    images = fn.crop(images, crop=(side, side))
                images = fn.rotate(images, angle=fn.random.uniform(range=(0.0, 360.0)), keep_size=True,
                                   fill_value=0)
                centre = side / 2
                if s.zoom:
                    c = c * fn.random.uniform(range=(1 - s.zoom, 1 + s.zoom))
                dy = fn.random.uniform(range=(-s.shift, s.shift)) * s.crop_size if s.shift else 0.0
                dx = fn.random.uniform(range=(-s.shift, s.shift)) * s.crop_size if s.shift else 0.0
                if s.zoom or s.shift:
                    start = fn.stack(centre + dy - c / 2, centre + dx - c / 2)
                    end = fn.stack(centre + dy + c / 2, centre + dx + c / 2)
                else:
                    start, end = (centre - c / 2,) * 2, (centre + c / 2,) * 2
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                lo = (424 - c) / 2
                start, end, mirror = (lo, lo), (lo + c, lo + c), 0
            images = fn.resize(images, size=(s.image_size, s.image_size), roi_start=start, roi_end=end,
                               roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT16 if gpu else types.FLOAT, output_layout="HWC", mirror=mirror,
                mean=[255 * m for m in IMAGENET_MEAN], std=[255 * v for v in IMAGENET_STD])
            if gpu:
                ids = ids.gpu()
            out = [images, ids]
            if s.labelled:
                out.append(outs[2].gpu() if gpu else outs[2])
            return tuple(out)

        pipe = graph()
        pipe.build()
        return pipe

    def __iter__(self):
        _, _, _, DALIGenericIterator, LastBatchPolicy = _import_dali()
        pipe = self.build_pipeline()
        names = ["images", "ids"] + (["labels"] if self.spec.labelled else [])
        policy = LastBatchPolicy.DROP if self.spec.train else LastBatchPolicy.PARTIAL
        it = DALIGenericIterator([pipe], names, reader_name="reader", last_batch_policy=policy, auto_reset=False)
        try:
            for _, out in zip(range(self.n_batches), it):
                d = out[0]
                yield Batch(images=d["images"].permute(0, 3, 1, 2),  # NHWC memory = channels-last NCHW
                            labels=d["labels"] if self.spec.labelled else None,
                            ids=d["ids"].reshape(-1))
        finally:
            del it, pipe
