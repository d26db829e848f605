"""The DALI loader: one graph for the GPU (`mixed` nvJPEG decode + gpu ops) and the CPU (cpu ops).

tar (+ .idx) -> decode -> [train: pre-crop -> random rotation 0-360° -> random crop box] -> crop+resize
in one `resize` with a region of interest -> crop_mirror_normalize (random flip in train) to HWC, which
the iterator hands over as N×3×H×W channels-last by a permute (no copy). When the graph runs on the CPU
for a GPU run, it stops at uint8 and the batch is normalized on the device (4× less to copy).

A pipeline is expensive to start (nvJPEG, memory pools, the shuffle buffer, prefetch), so `prepare()`
builds it up to its first batch ahead of use (the trainer calls it from a background thread during the
previous epoch's tail), and an eval loader keeps its pipeline for every pass.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

from ..cores import usable_cores
from .spec import IMAGENET_MEAN, IMAGENET_STD, Batch, LoaderError, LoaderSpec, batch_count, normalize_on_device

try:  # the one guarded import of DALI: no wheel for this platform, or libraries that fail to load
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    DALI_IMPORT_ERROR = None
except (ImportError, OSError) as exc:
    DALI_IMPORT_ERROR = exc

PIL_HINT = "use the PyTorch/PIL loader instead: --loader pil"


def _slice_size(total: int, rank: int, world: int) -> int:
    """Samples DALI's reader gives shard `rank` of `world` (contiguous ranges)."""
    return total * (rank + 1) // world - total * rank // world


HW_DECODER_LOAD = 0.65  # DALI's own default: the share of each batch given to the GPU's hardware JPEG decoder


class DALILoader:
    def __init__(self, spec: LoaderSpec, decode_on_gpu: bool, hw_decoder_load: float | None = None):
        if DALI_IMPORT_ERROR is not None:
            raise LoaderError(f"NVIDIA DALI cannot be loaded here ({DALI_IMPORT_ERROR}). Install nvidia-dali-cuda130 "
                              f"on Linux, or {PIL_HINT}")
        self.spec = spec
        self.gpu = decode_on_gpu
        self.name = "dali-gpu" if decode_on_gpu else "dali-cpu"
        # a CPU graph feeding a GPU run hands over uint8 and normalizes on the device
        self.normalize_in_graph = decode_on_gpu or spec.device.type == "cpu"
        self.counts = spec.labelled and spec.has_counts  # vote counts travel beside the fractions
        total = spec.total_samples
        if spec.world_size > total:  # DALI's reader cannot make more shards than samples
            raise LoaderError(f"{total} samples cannot be split over {spec.world_size} processes by DALI; use fewer "
                              f"processes or --loader pil")
        if spec.train:
            self.n_samples = total // spec.world_size  # the same on every rank, so no rank waits on another
        else:
            self.n_samples = _slice_size(total, spec.rank, spec.world_size)
        self.n_batches = batch_count(self.n_samples, spec.batch_size, spec.train)
        if spec.train and self.n_batches == 0:
            raise LoaderError(f"{total} training samples on {spec.world_size} process(es) make no full batch of "
                              f"{spec.batch_size}")
        # on a GPU the host threads only feed it: every core this process may use but the training loop's
        default = min(8, os.cpu_count() or 1) if not decode_on_gpu else max(1, usable_cores() - 1)
        self.threads = max(1, spec.workers) if spec.workers is not None else default  # DALI needs one thread
        self.hw_decoder_load = HW_DECODER_LOAD if hw_decoder_load is None else hw_decoder_load
        if not 0 <= self.hw_decoder_load <= 1:
            raise LoaderError(f"hw_decoder_load {self.hw_decoder_load} must be in [0, 1] (the share of the JPEGs given "
                              f"to the hardware decoder)")
        self._iterator = None

    def __len__(self):
        return self.n_batches

    # --- the graph ---------------------------------------------------------------------------------
    def _graph(self):
        s = self.spec
        exts = ["jpg", "i64"] + (["f32"] if s.labelled else []) + (["cnt"] if self.counts else [])
        dtypes = [types.UINT8, types.INT64] + ([types.FLOAT] if s.labelled else []) + ([types.FLOAT] if self.counts else [])
        outs = fn.readers.webdataset(
            paths=s.paths, index_paths=[sh.index for sh in s.shards], ext=exts, dtypes=dtypes,
            missing_component_behavior="error", random_shuffle=s.train,
            initial_fill=min(s.shuffle_buffer, max(1, self.n_samples)), seed=s.stream_seed(),
            shard_id=s.rank, num_shards=s.world_size, pad_last_batch=not s.train, stick_to_shard=not s.train,
            name="reader")
        jpg, ids = outs[0], outs[1]
        images, start, end, mirror = self._geometry(jpg)
        images = fn.resize(images, size=(s.image_size, s.image_size), roi_start=start, roi_end=end,
                           roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
        if self.normalize_in_graph:
            images = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT16 if s.dtype == torch.float16 else types.FLOAT, output_layout="HWC",
                mirror=mirror, mean=[255 * m for m in IMAGENET_MEAN], std=[255 * v for v in IMAGENET_STD])
        elif s.train:
            images = fn.flip(images, horizontal=mirror)
        out = [images, ids]  # ids stay on the CPU: they are only read back there
        for extra in outs[2:]:  # labels, then counts
            out.append(extra.gpu() if self.gpu else extra)
        return tuple(out)

    def _geometry(self, jpg):
        """(images, roi start, roi end, mirror) of the final crop, at the output's resolution: only the
        region the crop can reach is decoded; in train mode it is resized (antialiased) to the output's
        scale first, then rotated uniformly (the region is just large enough that no corner is ever
        blank), and the (jittered) box and a flip are drawn."""
        s = self.spec
        side = s.rotation_crop_side() if s.train else s.crop_size
        # fancy upsampling: the GPU decoder then upsamples 4:2:0 chroma as libjpeg-turbo (cpu, PIL) does
        gpu_only = {"hw_decoder_load": self.hw_decoder_load} if self.gpu else {}
        images = fn.decoders.image_crop(jpg, device="mixed" if self.gpu else "cpu", output_type=types.RGB,
                                        crop=(side, side), jpeg_fancy_upsampling=True, **gpu_only)
        if not s.train:
            return images, (0.0, 0.0), (float(side),) * 2, 0
        unit = s.crop_size / s.image_size  # region pixels per output pixel
        if unit > 1:  # shrink first: rotation then runs on the small image
            side = round(side / unit)
            images = fn.resize(images, size=(side, side), interp_type=types.INTERP_LINEAR, antialias=True)
            unit = 1.0
        images = fn.rotate(images, angle=fn.random.uniform(range=(0.0, 360.0)), keep_size=True, fill_value=0)
        centre, c = side / 2, s.image_size * unit
        if s.zoom:
            c = c * fn.random.uniform(range=(1 - s.zoom, 1 + s.zoom))
        if s.zoom or s.shift:
            dy = fn.random.uniform(range=(-s.shift, s.shift)) * s.image_size * unit if s.shift else 0.0
            dx = fn.random.uniform(range=(-s.shift, s.shift)) * s.image_size * unit if s.shift else 0.0
            start = fn.stack(centre + dy - c / 2, centre + dx - c / 2)
            end = fn.stack(centre + dy + c / 2, centre + dx + c / 2)
        else:
            start, end = (centre - c / 2,) * 2, (centre + c / 2,) * 2
        return images, start, end, fn.random.coin_flip(probability=0.5)

    # --- running it --------------------------------------------------------------------------------
    def _fail(self, exc: Exception, what: str) -> LoaderError:
        """One line for a DALI failure: the operator and its message, the bad sample when a scan of the
        shards finds it (DALI does not name it), and what to do."""
        text = str(exc)
        op = re.search(r"Error in \w+ operator `([^`]+)`", text)
        detail = text.split("encountered:", 1)[1] if "encountered:" in text else text
        lines = [line.strip() for line in detail.splitlines()
                 if line.strip() and "pipeline object is no longer valid" not in line and "Critical error" not in line]
        why = (f"{op.group(1)}: " if op else "") + (lines[0] if lines else repr(exc))
        bad = find_undecodable(self.spec.paths) if op and "decoders" in op.group(1) else None
        where = f"on {self.spec.device}" if self.gpu else "on the CPU"
        hint = PIL_HINT if self.gpu and not bad else "check the shards with `python -m shard_tools verify OUT --decode`"
        return LoaderError(f"{self.name} failed {what} {where}: {why}" + (f"; {bad}" if bad else "") + f"; {hint}")

    def prepare(self) -> DALILoader:
        """Builds the pipeline and its iterator, which runs it up to the first batch. Idempotent; safe to
        call from a background thread while another pipeline runs."""
        if self._iterator is not None or self.n_batches == 0:  # an empty slice (more ranks than samples) reads nothing
            return self
        s = self.spec
        device_id = (s.device.index if s.device.index is not None else torch.cuda.current_device()) if self.gpu else None
        try:
            pipe = pipeline_def(self._graph, batch_size=s.batch_size, num_threads=self.threads, device_id=device_id,
                                seed=s.stream_seed(), prefetch_queue_depth=2)()
            pipe.build()
            names = ["images", "ids"] + (["labels"] if s.labelled else []) + (["counts"] if self.counts else [])
            if s.train:
                policy = LastBatchPolicy.DROP
            else:
                policy = LastBatchPolicy.FILL if s.pad_last_batch else LastBatchPolicy.PARTIAL
            self._iterator = DALIGenericIterator([pipe], names, reader_name="reader", last_batch_policy=policy,
                                                 auto_reset=False)
        except RuntimeError as exc:  # nvJPEG/nvImageCodec not loading, an old driver, out of memory, a bad shard
            raise self._fail(exc, "to start") from exc
        return self

    def _batch(self, out: dict, valid: int | None) -> Batch:
        s = self.spec
        images = out["images"]
        if self.normalize_in_graph:
            images = images.permute(0, 3, 1, 2)  # NHWC memory = channels-last NCHW
            if images.device != s.device:
                images = images.to(s.device, non_blocking=True)
        else:
            images = normalize_on_device(images, s)
        labels = out["labels"].to(s.device, non_blocking=True) if s.labelled else None
        counts = out["counts"].to(s.device, non_blocking=True) if self.counts else None
        return Batch(images=images, labels=labels, ids=out["ids"].reshape(-1), valid=valid, counts=counts)

    def __iter__(self):
        if self.n_batches == 0:
            return
        self.prepare()
        s = self.spec
        it = self._iterator
        valid = s.valid_rows(self.n_samples, self.n_batches) if s.pad_last_batch else [None] * self.n_batches
        try:
            for i in range(self.n_batches):
                try:
                    out = next(it)[0]
                except StopIteration:
                    raise LoaderError(f"{self.name}: the shards ran out after {i} of {self.n_batches} batches; "
                                      f"an index or the manifest disagrees with its tar") from None
                except RuntimeError as exc:
                    raise self._fail(exc, f"at batch {i + 1}") from exc
                yield self._batch(out, valid[i])
        finally:
            self._rewind()

    def _rewind(self):
        """Train: one epoch, so the pipeline goes. Eval: read the pass to its end and reset, so the same
        pipeline serves the next pass (also after a consumer stopped early). next(), not a for loop: the
        iterator's __iter__ resets a started epoch, which would decode the whole pass a second time."""
        if self.spec.train or self._iterator is None:
            self.close()
            return
        try:
            with contextlib.suppress(StopIteration):
                while True:
                    next(self._iterator)
            self._iterator.reset()
        except RuntimeError:
            self.close()  # rebuilt on the next pass

    def close(self):
        self._iterator = None


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
