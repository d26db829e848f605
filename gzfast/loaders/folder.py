"""Images that were never packed, as eval batches: a folder (`predict --images DIR`) or the rows of a
catalogue (`loaders/catalog.py`), brought to the run's geometry exactly as `pack` brings them.

`Geometry` is that rule: a run on the Kaggle layout (`fit` None) takes side×side JPEGs as they are and
rejects any other image, as the Kaggle pack does; a run on a packed catalogue re-makes each image the way
`pack --catalog` did (`shard_tools.images.square_jpeg(data, side, fit)`). Then the PIL loader's eval
transform (`pil.pil_transform`), so a packed and an unpacked image give the same pixels.

`ImageFiles` turns a list of `Item`s (an image path, or the reason there is none) into padded `Batch`es
whose `ids` are the items' positions in the list (the caller maps them to galaxy ids). A file that cannot
be used (not a regular file, unreadable, undecodable, the wrong geometry) becomes a `Rejected` with its
reason: never silently dropped. Files are opened without blocking and told apart by type first
(`shard_tools.inputs.read_regular`), so a FIFO named like an image is rejected, never read. Decoding runs
in a thread pool (PIL releases the GIL while it decodes and resizes), one batch ahead of the model, or, with
0 workers (the CPU default, as the trainer's budget gives), in the calling thread between the model's
batches: decoding beside torch's threads on a CPU starves them (measured on 2 cores: 6x slower).

`list_folder` lists a folder's files as `Item`s with their ids: integers by the packer's rule
(`shard_tools.ids.parse_int_id`: `-5.jpg`, `+77.jpg`, `1_000.jpg`, `٣.jpg` and ids beyond int64 are
rejected) for Kaggle runs, the file stem as text for any other tree; a repeated id is rejected.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shard_tools.ids import canonical, int_id_problem, parse_int_id
from shard_tools.images import square_jpeg, stored_jpeg_problem
from shard_tools.inputs import NotRegularFile, not_regular, read_regular
from shard_tools.layout import IMAGE_SIDE

from .pil import pil_transform
from .spec import Batch, LoaderSpec, normalize_on_device


@dataclass(frozen=True)
class Rejected:
    file: str     # as the user named it (a file name, or a catalogue's cell)
    reason: str
    id: str = ""  # the galaxy id as written, where one is known


@dataclass(frozen=True)
class Item:
    """One galaxy to read: its id (int or text), the file, and where to say it came from."""
    id: int | str | None
    path: str | None          # None: `problem` says why there is no usable file
    shown: str                # how messages name it (file name, or `catalog.csv:12: images/x.jpg`)
    problem: str | None = None


@dataclass(frozen=True)
class Geometry:
    """How an unpacked image becomes the run's stored image: `fit` None keeps side×side JPEGs as they are
    (the Kaggle layout); `crop`/`resize` re-make any JPEG or PNG as `pack --catalog` does."""
    side: int = IMAGE_SIDE
    fit: str | None = None

    def stored(self, data: bytes) -> tuple[bytes | None, str | None]:
        """(JPEG bytes as pack would store them, None) or (None, why this image cannot be used)."""
        if self.fit is not None:
            return square_jpeg(data, self.side, self.fit)
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG":
                    return None, f"not a JPEG ({img.format or 'unknown format'})"
        except Exception as exc:  # noqa: BLE001 - PIL raises several kinds on bytes that are no image
            return None, f"cannot decode: {exc}"
        problem = stored_jpeg_problem(data, self.side)
        return (None, problem) if problem else (data, None)


def eval_spec(batch_size: int, image_size: int, crop_size: int, device, dtype, workers: int | None,
              side: int = IMAGE_SIDE) -> LoaderSpec:
    """An eval-mode LoaderSpec with no shards: what pil_transform and normalize_on_device read."""
    return LoaderSpec(shards=[], train=False, batch_size=batch_size, image_size=image_size, crop_size=crop_size,
                      rank=0, world_size=1, seed=0, epoch=0, workers=workers, zoom=0.0, shift=0.0, labelled=False,
                      pad_last_batch=True, device=torch.device(device), dtype=dtype, source_side=side).check("pil")


def read_image(item: Item, spec: LoaderSpec, geometry: Geometry) -> np.ndarray | Rejected:
    """The item's pixels (HWC uint8, the eval transform's output), or why there are none."""
    if item.path is None:
        return Rejected(item.shown, item.problem or "no image file", str(item.id or ""))
    try:
        data = read_regular(item.path)
    except NotRegularFile as exc:  # a FIFO, socket or device: told by its type, never read
        return Rejected(item.shown, exc.strerror.split(";")[0], str(item.id))
    except OSError as exc:
        return Rejected(item.shown, f"cannot read: {exc.strerror or exc}", str(item.id))
    jpeg, problem = geometry.stored(data)
    if problem:
        return Rejected(item.shown, problem, str(item.id))
    try:
        return pil_transform(jpeg, 0, spec)
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... on bad data
        return Rejected(item.shown, f"cannot decode: {exc}", str(item.id))


class _InThread:
    """What a thread pool gives, computed at once in the calling thread (`workers` 0: decoding between the
    model's batches, so that on a CPU the model keeps every core)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        done = Future()
        done.set_result(fn(*args))
        return done


class ImageFiles:
    """Iterable of padded eval `Batch`es over `items`; `Batch.ids` are positions in `items`. `rejected`
    fills as it goes; `len()` is an upper bound until the pass ends (rejects shorten it). `spec.workers`
    decoding threads (0: in the calling thread; None: up to 8)."""

    def __init__(self, items: list[Item], spec: LoaderSpec, geometry: Geometry):
        self.items, self.spec, self.geometry = items, spec, geometry
        self.rejected: list[Rejected] = []
        self.workers = spec.workers if spec.workers is not None else min(os.cpu_count() or 1, 8)

    def _pool(self):
        return ThreadPoolExecutor(self.workers, thread_name_prefix="decode") if self.workers else _InThread()

    def __len__(self):
        return -(-len(self.items) // self.spec.batch_size)

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
        starts = range(0, len(self.items), s.batch_size)
        pending: list[tuple[int, np.ndarray]] = []
        with self._pool() as pool:
            def submit(start):
                return [pool.submit(read_image, it, s, self.geometry) for it in self.items[start:start + s.batch_size]]

            ahead = [submit(i) for i in starts[:2]]
            for k, start in enumerate(starts):
                results = [f.result() for f in ahead.pop(0)]
                if k + 2 < len(starts):  # keep the next batch decoding while the model runs this one
                    ahead.append(submit(starts[k + 2]))
                for pos, r in enumerate(results, start):
                    if isinstance(r, Rejected):
                        self.rejected.append(r)
                    else:
                        pending.append((pos, r))
                while len(pending) >= s.batch_size:
                    yield self._emit(pending[:s.batch_size])
                    pending = pending[s.batch_size:]
            if pending:
                yield self._emit(pending)


# --- a folder of images ---------------------------------------------------------------------------

def _folder_id(stem: str, integer_ids: bool) -> tuple[int | str | None, str | None]:
    if not integer_ids:
        text = canonical(stem, "string")
        return (text, None) if text is not None else (None, "file name has no id (an empty stem)")
    if stem != stem.strip():  # " 88.jpg" is not 88.jpg: the packer takes <digits>.jpg only
        return None, f"file name is not <GalaxyID>.jpg (an integer id): blanks around the id {stem!r}"
    gid = parse_int_id(stem)
    if gid is None:
        return None, f"file name is not <GalaxyID>.jpg (an integer id): {int_id_problem(stem)}"
    return gid, None


def list_folder(folder: Path, integer_ids: bool) -> list[Item]:
    """The folder's entries (sorted by name; hidden names and sub-folders left out) as Items: each with its
    id from the name, or the reason it cannot be used (a FIFO or device, a name that is no id, a repeated id)."""
    items, seen = [], {}
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith("."))
    for name in names:
        path = os.path.join(folder, name)
        try:
            kind = not_regular(path)
        except OSError as exc:
            items.append(Item(None, None, name, f"cannot look at it ({exc.strerror})"))
            continue
        if kind == "a folder":
            continue
        gid, problem = _folder_id(Path(name).stem, integer_ids)
        if problem is None and kind is not None:
            problem = f"not a regular file ({kind})"
        if problem is None and gid in seen:
            problem = f"id {gid} repeats {seen[gid]}'s"
        if problem is None:
            seen[gid] = name
        items.append(Item(gid, path if problem is None else None, name, problem))
    return items
