"""A folder of 424×424 GZ2 JPEGs as eval batches, without packing (`predict --images DIR`).

Ids come from the file names (`<GalaxyID>.jpg`). Each image goes through the PIL loader's eval transform
(`pil.pil_transform`: the centred crop resized with the same box), so a folder and the same images
packed into shards give the same pixels. A file that is not a decodable 424×424 JPEG, whose name is not an
integer id, or whose id repeats another file's is reported (name and reason), collected in `rejected`,
and skipped: never silently dropped. Decoding runs in a thread pool (PIL releases the GIL while it
decodes and resizes), one batch ahead of the model; batches are padded to one shape like the loaders'.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shard_tools.layout import IMAGE_SIDE

from .pil import pil_transform
from .spec import Batch, LoaderSpec, normalize_on_device


@dataclass(frozen=True)
class Rejected:
    file: str
    reason: str


def eval_spec(batch_size: int, image_size: int, crop_size: int, device, dtype, workers: int | None) -> LoaderSpec:
    """An eval-mode LoaderSpec with no shards: what pil_transform and normalize_on_device read."""
    return LoaderSpec(shards=[], train=False, batch_size=batch_size, image_size=image_size, crop_size=crop_size,
                      rank=0, world_size=1, seed=0, epoch=0, workers=workers, zoom=0.0, shift=0.0, labelled=False,
                      pad_last_batch=True, device=torch.device(device), dtype=dtype).check("pil")


def _decode(path: Path, spec: LoaderSpec) -> tuple[int, np.ndarray] | Rejected:
    try:
        gid = int(path.stem)
    except ValueError:
        return Rejected(path.name, "file name is not <GalaxyID>.jpg (an integer id)")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                return Rejected(path.name, f"not a JPEG ({img.format or 'unknown format'})")
            if img.size != (IMAGE_SIDE, IMAGE_SIDE):
                return Rejected(path.name, f"{img.size[0]}x{img.size[1]} pixels, not {IMAGE_SIDE}x{IMAGE_SIDE}")
        return gid, pil_transform(data, gid, spec)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated, corrupt, unreadable
        return Rejected(path.name, f"cannot decode: {exc}")


class ImageFolderBatches:
    """Iterable of padded eval `Batch`es over the files of `folder` (sorted by name); `rejected` fills as
    it goes. `len()` is an upper bound until the pass ends (rejects shorten it)."""

    def __init__(self, folder: str | Path, spec: LoaderSpec):
        self.folder = Path(folder)
        self.spec = spec
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        self.rejected: list[Rejected] = []
        self.workers = spec.workers or min(os.cpu_count() or 1, 8)

    def __len__(self):
        return -(-len(self.files) // self.spec.batch_size)

    def _emit(self, rows: list[tuple[int, np.ndarray]]) -> Batch:
        s = self.spec
        valid = len(rows)
        rows = rows + [rows[-1]] * (s.batch_size - valid)  # one shape: repeat the last image
        images = torch.from_numpy(np.stack([r[1] for r in rows]))
        ids = torch.tensor([r[0] for r in rows], dtype=torch.int64)
        return Batch(images=normalize_on_device(images, s), labels=None, ids=ids, valid=valid)

    def __iter__(self):
        s = self.spec
        self.rejected = []
        seen: set[int] = set()
        chunks = [self.files[i:i + s.batch_size] for i in range(0, len(self.files), s.batch_size)]
        pending: list[tuple[int, np.ndarray]] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            def submit(chunk):
                return [pool.submit(_decode, p, s) for p in chunk]

            ahead = [submit(c) for c in chunks[:2]]
            for i in range(len(chunks)):
                results = [f.result() for f in ahead.pop(0)]
                if i + 2 < len(chunks):  # keep the next chunk decoding while the model runs this one
                    ahead.append(submit(chunks[i + 2]))
                for path, r in zip(chunks[i], results):
                    if isinstance(r, Rejected):
                        self.rejected.append(r)
                    elif r[0] in seen:
                        self.rejected.append(Rejected(path.name, f"GalaxyID {r[0]} repeats another file's id"))
                    else:
                        seen.add(r[0])
                        pending.append(r)
                while len(pending) >= s.batch_size:
                    yield self._emit(pending[:s.batch_size])
                    pending = pending[s.batch_size:]
            if pending:
                yield self._emit(pending)
