"""What predict and embed read, cut into chunks of galaxies: packed shards, a folder of images, or the rows
of a catalogue. Each source says how many galaxies it holds, how they are numbered into chunks, what its
ids are called and typed, what it was made from (its fingerprint: a resumed output must come from the
same input), and gives one chunk at a time as batches plus the way back from a batch's ids to galaxy ids.

- shards: whole shards grouped into chunks of at most `--chunk` galaxies (at least one shard each), read
  by the run's loader; ids are the sample ids, or the catalogue's ids through the set's id table;
- a folder: its files in name order, `--chunk` at a time (`loaders.folder.list_folder`);
- a catalogue: its rows, `--chunk` at a time (`loaders.catalog.CatalogReader`).
The images of a folder or a catalogue are brought to the run's geometry as pack brings them
(`loaders.folder.Geometry`), so they give the pixels the packed images give.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from shard_tools.layout import LayoutError, PackedSet, is_remote, shard_info

from .inference import InferenceError
from .inference_args import Setup
from .loaders import make_loader
from .loaders.catalog import CatalogReader
from .loaders.folder import Geometry, ImageFiles, Item, Rejected, eval_spec, list_folder


@dataclass
class Chunk:
    """One chunk's batches; after the pass, how many galaxies it must have given and what was rejected."""
    batches: Iterable
    output_ids: Callable[[np.ndarray], list]     # the batches' ids -> the galaxies' ids
    expected: Callable[[], int]
    rejected: Callable[[], list[Rejected]] = lambda: []


@dataclass
class Source:
    name: str                      # for messages: the flag and its value
    id_column: str
    id_type: pa.DataType
    sizes: list[int]               # galaxies (or rows) per chunk
    fingerprint: dict
    inputs: list[str]              # files and folders it reads (never an output)
    chunks: Callable[[list[int]], Iterator[tuple[int, Chunk]]]   # (k, chunk k) for the wanted k, in order
    rejected_header: str = "file,reason"

    @property
    def chunk_count(self) -> int:
        return len(self.sizes)


# --- packed shards ----------------------------------------------------------------------------------

def _shard_paths(path: str, split: str | None) -> tuple[list[str], PackedSet | None]:
    """The shards of `--shards` (see predict's doc): OUT/test, OUT (with --split), s3:// likewise, or a
    folder of test tars."""
    split_given = split is not None
    split = split or "test"
    if is_remote(path):
        root = str(path).rstrip("/")
        if root.endswith(f"/{split}"):
            root = root.removesuffix(f"/{split}")
        data = PackedSet.open(root)
        return data.paths(split), data
    p = Path(path)
    if not p.is_dir():
        if p.name == "test" and (p.parent / "manifest.json").is_file():  # pack writes no test/ without test images
            raise InferenceError(f"--shards {p}: no test shards in {p.parent}, it was packed without test images (a "
                                 f"catalogue packs train and val only); predict its val split with --shards {p.parent} "
                                 f"--split val, or the images themselves with --catalog FILE or --images DIR")
        raise InferenceError(f"--shards {p}: no such folder; pass OUT/test of a packed set (make shards)")
    root = p if (p / "manifest.json").is_file() else p.parent if (p.parent / "manifest.json").is_file() else None
    if root is None:
        if split_given:
            raise InferenceError(f"--split {split}: {p} is not a packed set (no manifest.json); pass its root")
        return sorted(str(t) for t in p.glob("*.tar")), None
    if root != p and p.name != split:
        other = f", or --shards {root} --split {p.name} for its {p.name} shards" if p.name in ("val", "train", "test") else ""
        raise InferenceError(f"--shards {p}: the {p.name} folder of {root} holds no {split} shards; pass {root / split}{other}")
    data = PackedSet.open(root)
    return data.paths(split), data


def _check_set(data: PackedSet, split: str, setup: Setup):
    """The packed set must be of the run's tree and image side, its shards as the manifest says."""
    tree, side, where = setup.loaded.tree, setup.loaded.data.image_side, data.root
    if data.tree.columns != tree.columns:
        raise InferenceError(f"--shards {where}: packed for the {data.tree.name} tree ({data.tree.n} answers), the "
                             f"run was trained on the {tree.name} tree ({tree.n}); pass shards of the run's tree")
    if data.image_side != side:
        raise InferenceError(f"--shards {where}: {data.image_side} px images, the run was trained on {side} px "
                             f"ones; pack the images at --side {side}")
    problems = data.problems(data.select(split))
    if problems:
        raise InferenceError(f"{len(problems)} problem(s) in the {split} shards of {where}, first: {problems[0]}; "
                             f"`python -m shard_tools verify {where}` lists them")


def group_shards(infos: list, chunk: int) -> tuple[list[list[str]], list[int]]:
    """Consecutive whole shards grouped into chunks of at most `chunk` samples (at least one shard each)."""
    groups, sizes = [], []
    for info in infos:
        if groups and sizes[-1] + info.samples <= chunk:
            groups[-1].append(info.path)
            sizes[-1] += info.samples
        else:
            groups.append([info.path])
            sizes.append(info.samples)
    return groups, sizes


def open_shards(args, setup: Setup) -> Source:
    split = args.split or "test"
    try:
        paths, data = _shard_paths(args.shards, args.split)
        if not paths:
            raise InferenceError(f"--shards {args.shards}: no {split} shards in {data.root if data else args.shards}; "
                                 f"pack a set with test images (images_test_rev1/), pass --split val, or predict "
                                 f"images with --images DIR / --catalog FILE")
        if data is not None:
            _check_set(data, split, setup)
        infos = [shard_info(p) for p in paths]
    except LayoutError as exc:
        raise InferenceError(str(exc)) from None
    if split == "test" and any(i.labelled for i in infos):
        labelled = next(i for i in infos if i.labelled)
        raise InferenceError(f"--shards {args.shards}: {Path(labelled.path).name} holds labelled (train/val) samples, "
                             f"not test shards; pass OUT/test, or use `python -m gzfast.evaluate` for labelled data")
    groups, sizes = group_shards(infos, args.chunk)
    names = data.id_names() if data is not None else None
    cfg, pred, tree = setup.loaded.cfg, setup.predictor, setup.loaded.tree

    def chunks(wanted):
        for k in wanted:
            loader = make_loader(setup.loader, groups[k], train=False, batch_size=setup.batch_size,
                                 image_size=cfg.image_size, crop_size=cfg.crop_size, workers=setup.workers,
                                 device=pred.device, dtype=pred.image_dtype, pad_last_batch=True,
                                 source_side=setup.loaded.data.image_side, label_count=tree.n)
            to_ids = (lambda ids: ids.tolist()) if names is None else (lambda ids: [names[int(i)] for i in ids])
            yield k, Chunk(loader, to_ids, lambda k=k: sizes[k])

    fingerprint = {"shards": [(Path(p).name, i.samples) for p, i in zip(paths, infos)],
                   "set": data.fingerprint if data is not None else None, "split": split}
    id_column = data.id_column if data is not None else tree.id_column
    return Source(f"--shards {args.shards}", id_column, pa.string() if names else pa.int64(), sizes, fingerprint,
                  [] if is_remote(args.shards) else paths, chunks)


# --- images that were never packed -------------------------------------------------------------------

def _image_chunks(setup: Setup, args, items_of: Callable[[list[int]], Iterator[tuple[int, list[Item]]]]):
    cfg, pred, data = setup.loaded.cfg, setup.predictor, setup.loaded.data
    spec = eval_spec(setup.batch_size, cfg.image_size, cfg.crop_size, pred.device, pred.image_dtype, setup.workers,
                     data.image_side)
    geometry = Geometry(data.image_side, data.fit)

    def chunks(wanted):
        for k, items in items_of(wanted):
            files = ImageFiles(items, spec, geometry)
            yield k, Chunk(files, lambda pos, items=items: [items[int(i)].id for i in pos],
                           lambda files=files: len(files.items) - len(files.rejected), lambda files=files: files.rejected)
    return chunks


def open_folder(args, setup: Setup) -> Source:
    folder = Path(args.images)
    if not folder.is_dir():
        raise InferenceError(f"--images {folder}: no such folder; pass a folder of <id>.jpg files")
    integer = setup.loaded.data.kaggle
    try:
        items = list_folder(folder, integer)
    except OSError as exc:
        raise InferenceError(f"--images {folder}: cannot list the folder ({exc.strerror})") from None
    if not items:
        raise InferenceError(f"--images {folder}: the folder holds no files")
    n = args.chunk
    sizes = [len(items[i:i + n]) for i in range(0, len(items), n)]
    listing = hashlib.blake2b(digest_size=16)
    for it in items:
        st = os.stat(it.path) if it.path else None
        listing.update(f"{it.shown}:{st.st_size if st else '-'}:{st.st_mtime_ns if st else '-'}\n".encode("utf-8", "surrogateescape"))
    fingerprint = {"images": str(folder.resolve()), "files": listing.hexdigest()}
    tree = setup.loaded.tree
    return Source(f"--images {folder}", tree.id_column, pa.int64() if integer else pa.string(), sizes, fingerprint,
                  [str(folder)], _image_chunks(setup, args, lambda wanted: ((k, items[k * n:(k + 1) * n]) for k in wanted)))


def open_catalog(args, setup: Setup) -> Source:
    from shard_tools.inputs import not_regular

    path = Path(args.catalog)
    try:
        kind = not_regular(path)
    except FileNotFoundError:
        raise InferenceError(f"--catalog {path}: file not found; pass a CSV or Parquet table of ids and image paths") from None
    except OSError as exc:
        raise InferenceError(f"--catalog {path}: cannot look at it ({exc.strerror})") from None
    if kind is not None:
        raise InferenceError(f"--catalog {path}: {kind}, not a file; pass a CSV or Parquet table")
    images = Path(args.images) if args.images else path.parent
    if not images.is_dir():
        raise InferenceError(f"--images {images}: no such folder (the folder the catalogue's image paths are relative to)")
    tree, kaggle = setup.loaded.tree, setup.loaded.data.kaggle
    file_column = args.file_column or tree.file_column
    reader = CatalogReader(path, args.id_column or tree.id_column, file_column, images, True if kaggle else None)
    reader.scan()
    if not reader.rows:
        raise InferenceError(f"--catalog {path}: the catalogue has no rows")
    n = args.chunk
    sizes = [min(n, reader.rows - s) for s in range(0, reader.rows, n)]
    fingerprint = {"catalog": str(path.resolve()), "digest": reader.digest, "images": str(images.resolve()),
                   "id_column": reader.id_column, "file_column": reader.file_column}
    return Source(f"--catalog {path}", reader.id_column, pa.int64() if reader.integer_ids else pa.string(), sizes,
                  fingerprint, [str(path)], _image_chunks(setup, args, lambda wanted: reader.chunks(n, wanted)),
                  rejected_header="id,file,reason")


def check_source_args(args):
    """The source flags on their own, checked before the model is loaded (a slip costs no model load)."""
    if args.chunk < 1:
        raise InferenceError(f"--chunk {args.chunk} must be >= 1")
    if args.split and not args.shards:
        raise InferenceError("--split goes with --shards OUT (a packed set)")
    if (args.id_column or args.file_column) and not args.catalog:
        raise InferenceError("--id-column/--file-column go with --catalog FILE")
    if args.shards and args.images:
        raise InferenceError("--images goes alone (a folder of images) or with --catalog, not with --shards")
    if not (args.shards or args.catalog or args.images):
        raise InferenceError("give what to read: --shards OUT/test, --images DIR or --catalog FILE")


def open_source(args, setup: Setup) -> Source:
    """The source the flags name: exactly one of --shards, --images (alone) or --catalog."""
    check_source_args(args)
    if args.shards:
        return open_shards(args, setup)
    if args.catalog:
        return open_catalog(args, setup)
    return open_folder(args, setup)
