"""Reading and validating the Kaggle GZ2 layout: the label CSV, the two image folders, each JPEG.

Every row or file that cannot be used becomes a `Rejection` with a reason (a CSV row with `file:line`);
nothing is dropped silently. Problems that make the whole input untrustworthy (a missing folder or CSV,
a wrong CSV header, duplicated GalaxyIDs) raise `CatalogError` instead, naming the file and the ids.

GalaxyIDs are numbers: `0104816` and `104816` are one galaxy, in the CSV and in image names alike. Two
rows of one id stop the run; two image files of one id (in either folder) are both rejected, each naming
the other, so an id is never two samples. A JPEG with an EXIF orientation other than 1 is rejected: DALI
would rotate it and PIL would not (GZ2 cut-outs carry none). An entry that is not a regular file (a FIFO, a
socket, a device) is rejected by its type, never read.

Other catalogues (CSV or Parquet, any decision tree) are read by user_catalog.py.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .ids import parse_int_id
from .images import stored_jpeg_problem
from .inputs import kind_reason, not_regular, path_digest
from .layout import IMAGE_SIDE
from .schema import COLUMNS, CSV_HEADER, label_problem

LABELS_CSV = "training_solutions_rev1.csv"
TRAIN_IMAGES = "images_training_rev1"
TEST_IMAGES = "images_test_rev1"
IMAGE_SIZE = (IMAGE_SIDE, IMAGE_SIDE)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)        # str.isdigit() also takes '²' and Arabic-Indic digits
_ID_FILE = re.compile(r"([0-9]+)\.jpg", re.ASCII)
_HASH_CHUNK = 256  # image files per hashing task
_EXPECTED = f"{CSV_HEADER[0]}, {COLUMNS[0]} ... {COLUMNS[-1]}"  # the Kaggle header, in words


class CatalogError(UserError, ValueError):
    """The input cannot be packed at all (as opposed to single rows or files, which are rejected)."""


@dataclass(frozen=True)
class Rejection:
    galaxy_id: str  # as written in the input; may not be an integer
    file: str       # the CSV (with line number) or the image path
    split: str      # train or test
    reason: str


@dataclass
class Catalog:
    train: pd.DataFrame            # GalaxyID (int64), file (str), the Kaggle labels (float32); ascending id
    test: pd.DataFrame             # GalaxyID, file; ascending id
    rejected: list[Rejection] = field(default_factory=list)
    n_input: int = 0               # label rows + training images no row accounts for + test images


@dataclass
class InputFiles:
    """One read of the input: the CSV's bytes and the image folders' listings, so that the fingerprint and
    the catalog describe the same files. `digests` (path -> "size:blake2b") is filled by `hash_images`."""
    root: Path
    csv_bytes: bytes
    images: dict[str, dict[str, Path]]   # folder -> {file name: path}, names sorted
    digests: dict[str, str] = field(default_factory=dict)


parse_id = parse_int_id  # the GalaxyID written as a text, or None (the rule lives in ids.py)


def regular_file_problem(path: Path, what: str) -> str | None:
    """Why `path` (which exists) cannot be read as `what`, by its type: a FIFO or device is never opened."""
    try:
        kind = not_regular(path)
    except OSError as exc:
        return f"cannot look at the {what} ({exc.strerror})"
    return None if kind is None else f"the {what} is {kind}, not a regular file"


def _listing(folder: Path, required: bool) -> dict[str, Path]:
    if not folder.exists():
        if required:
            raise CatalogError(f"{folder}: training image folder not found (expected the Kaggle layout: "
                               f"{LABELS_CSV}, {TRAIN_IMAGES}/, {TEST_IMAGES}/)")
        return {}
    if not folder.is_dir():
        raise CatalogError(f"{folder}: is not a folder; the Kaggle layout keeps the images in a folder of that name")
    try:
        return {p.name: p for p in sorted(folder.iterdir())}
    except OSError as exc:
        raise CatalogError(f"{folder}: cannot list the image folder ({exc.strerror}); check its permissions") from None


def scan_input(data_dir: str | Path) -> InputFiles:
    """Reads the label CSV and lists the image folders; raises CatalogError naming what is missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "not found"
        raise CatalogError(f"{data_dir}: --data folder {what}; point --data at the folder holding {LABELS_CSV}, "
                           f"{TRAIN_IMAGES}/ and {TEST_IMAGES}/")
    csv_path = data_dir / LABELS_CSV
    if not csv_path.exists():
        raise CatalogError(f"{csv_path}: label file not found (expected the Kaggle layout: {LABELS_CSV}, "
                           f"{TRAIN_IMAGES}/, {TEST_IMAGES}/)")
    problem = regular_file_problem(csv_path, "label file")
    if problem:
        raise CatalogError(f"{csv_path}: {problem}; the Kaggle layout keeps the labels in a CSV file")
    try:
        csv_bytes = csv_path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{csv_path}: cannot read the label file ({exc.strerror}); check its permissions") from None
    images = {TRAIN_IMAGES: _listing(data_dir / TRAIN_IMAGES, True), TEST_IMAGES: _listing(data_dir / TEST_IMAGES, False)}
    return InputFiles(data_dir, csv_bytes, images)


def _digest_files(paths: list[Path]) -> list[str]:
    return [path_digest(p) for p in paths]


def digest_paths(paths: list[Path], threads: int | None = None) -> dict[str, str]:
    """{path: "size:blake2b"} of files (a marker for what is not a readable regular file, never read).
    Threads suffice: reads and hashing of large buffers release the GIL."""
    chunks = [paths[i:i + _HASH_CHUNK] for i in range(0, len(paths), _HASH_CHUNK)]
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        digests = [d for chunk in pool.map(_digest_files, chunks) for d in chunk]
    return {str(p): d for p, d in zip(paths, digests)}


def hash_images(inp: InputFiles, threads: int | None = None) -> InputFiles:
    """Fills `inp.digests`: every image's size and blake2b."""
    inp.digests = digest_paths([p for names in inp.images.values() for p in names.values()], threads)
    return inp


def input_fingerprint(inp: InputFiles, options: dict) -> str:
    """sha256 over the label CSV's bytes, every image's name, size and blake2b of its bytes, and the pack
    options: an image replaced by another of the same size changes it."""
    if not inp.digests and any(inp.images.values()):
        hash_images(inp)
    h = hashlib.sha256(inp.csv_bytes)
    for folder, names in inp.images.items():
        for name, path in names.items():
            h.update(f"{folder}/{name}:{inp.digests[str(path)]}\n".encode("utf-8", "surrogateescape"))
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()


def readable(text: str) -> str:
    """`text` with undecodable bytes (kept as surrogates) shown as \\xNN, so it can be printed and written."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _split_csv(csv_path: Path, data: bytes) -> tuple[list[str], list[tuple[int, list[str] | None, str]]]:
    """The header, and per non-blank data line (line number, cells or None, problem). One physical line is
    one row (the Kaggle CSV has no quoted line breaks), so a broken line costs that row only and every
    reason names its true line."""
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    header = _cells(lines[0]) if lines and lines[0].strip() else None
    if header is None:
        raise CatalogError(f"{csv_path}: no header line; expected {_EXPECTED}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = _cells(line)
        bad = _undecodable(line)
        if bad:
            rows.append((n, cells, f"line is not UTF-8 text (byte {bad}); save the CSV as UTF-8"))
        elif cells is None:
            rows.append((n, None, "line is not valid CSV"))
        elif len(cells) != len(CSV_HEADER):
            rows.append((n, cells, f"{len(cells)} fields, expected {len(CSV_HEADER)} ({CSV_HEADER[0]} and {len(COLUMNS)} labels)"))
        else:
            rows.append((n, cells, ""))
    return [c.strip() for c in header], rows


def _undecodable(line: str) -> str | None:
    """The first byte of `line` that was not UTF-8 (decoded to a surrogate), shown as \\xNN; else None."""
    try:
        line.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return readable(line[exc.start])


def _cells(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line]))
    except (csv.Error, StopIteration):  # e.g. a field over csv's size limit
        return None


def _check_header(csv_path: Path, header: list[str]):
    if header != CSV_HEADER:
        missing = [c for c in CSV_HEADER if c not in header]
        extra = [readable(c) for c in header if c not in CSV_HEADER]
        detail = (f"missing {missing}" if missing else "") + (f" unexpected {extra}" if extra else "")
        raise CatalogError(f"{csv_path}: header is not the Kaggle one ({detail.strip() or 'columns out of order'}); "
                           f"expected {_EXPECTED}")


def _check_unique_rows(csv_path: Path, rows) -> None:
    """Two rows for one GalaxyID (as numbers: `0104816` is `104816`) make every label of it doubtful: stop."""
    lines_of: dict[int, list[tuple[int, str]]] = {}
    for n, cells, _ in rows:
        gid = parse_id(cells[0]) if cells else None
        if gid is not None:
            lines_of.setdefault(gid, []).append((n, cells[0].strip()))
    dup = {g: v for g, v in lines_of.items() if len(v) > 1}
    if not dup:
        return
    parts = []
    for g, where in list(dup.items())[:5]:
        written = sorted({w for _, w in where})
        spelled = f" (written {', '.join(written)})" if written != [str(g)] else ""
        parts.append(f"{g}{spelled} on lines {', '.join(str(n) for n, _ in where)}")
    raise CatalogError(f"{csv_path}: {len(dup)} duplicated GalaxyID(s): {'; '.join(parts)}; keep one row per galaxy")


def _image_ids(inp: InputFiles, rejected: list[Rejection], not_files: dict[int, str]
               ) -> tuple[dict[int, tuple[str, Path]], dict[int, list[str]]]:
    """Images by GalaxyID: {id: (folder, path)} for ids with exactly one image file in either folder, and
    {id: [files]} for ids with several (`0104816.jpg` and `104816.jpg`, or one id in both folders): those
    files are all rejected, each naming the others, so no id ever becomes two samples."""
    by_id: dict[int, list[tuple[str, str, Path]]] = {}
    for folder, names in inp.images.items():
        split = "train" if folder == TRAIN_IMAGES else "test"
        for name, path in names.items():
            m = _ID_FILE.fullmatch(name)
            gid = parse_id(m.group(1)) if m else None
            kind = _kind_of(path) if gid is not None else None
            if gid is None:
                rejected.append(Rejection(readable(name), readable(f"{folder}/{name}"), split,
                                          "file name is not <GalaxyID>.jpg (a positive integer id)"))
            elif kind:  # a FIFO or device named like an image: never opened
                rejected.append(Rejection(readable(m.group(1)), readable(f"{folder}/{name}"), split, kind_reason(kind)))
                not_files[gid] = f"{folder}/{name} is {kind}"
            else:
                by_id.setdefault(gid, []).append((folder, name, path))
    single = {g: (v[0][0], v[0][2]) for g, v in by_id.items() if len(v) == 1}
    several = {g: [f"{folder}/{name}" for folder, name, _ in v] for g, v in by_id.items() if len(v) > 1}
    for g, files in several.items():
        for f in files:
            others = ", ".join(o for o in files if o != f)
            rejected.append(Rejection(readable(Path(f).stem), readable(f), "train" if f.startswith(TRAIN_IMAGES) else "test",
                                      f"same GalaxyID {g} as {readable(others)}; remove or rename all but one"))
    return single, several


def _kind_of(path: Path) -> str | None:
    """What `path` is when it is not a regular file ('a FIFO', ...); None for a file (or if it vanished: the
    read that follows says so)."""
    try:
        return not_regular(path)
    except OSError:
        return None


def read_catalog(data: str | Path | InputFiles, tol: float = 1e-4) -> Catalog:
    """Reads the Kaggle layout (a folder, or what `scan_input` read of it); validates the labels, not yet the
    JPEGs. A bad row or file is rejected with its reason; a bad header or duplicated ids stop."""
    inp = data if isinstance(data, InputFiles) else scan_input(data)
    csv_path = inp.root / LABELS_CSV
    header, rows = _split_csv(csv_path, inp.csv_bytes)
    _check_header(csv_path, header)
    _check_unique_rows(csv_path, rows)
    rejected: list[Rejection] = []
    not_files: dict[int, str] = {}  # ids whose "image" is a FIFO, socket or device
    images, several = _image_ids(inp, rejected, not_files)

    # Labels of the well-formed rows at once: 61,578 rows of Kaggle labels.
    full = [(n, cells) for n, cells, problem in rows if not problem]
    shape = (len(full), len(COLUMNS))
    text = pd.Series([cell for _, c in full for cell in c[1:]], dtype=object).str.strip()
    labels64 = pd.to_numeric(text, errors="coerce").to_numpy(np.float64).reshape(shape)
    non_numeric = np.isnan(labels64) & (text.str.lower() != "nan").to_numpy().reshape(shape)

    keep, keep_ids, keep_files = [], [], []
    claimed = set()  # ids whose training image a label row accounts for
    full_index = {n: k for k, (n, _) in enumerate(full)}
    for n, row, problem in rows:
        written = readable(row[0].strip()) if row else ""
        where = f"{LABELS_CSV}:{n}"
        gid = parse_id(row[0]) if row else None
        if gid is not None and gid in images and images[gid][0] == TRAIN_IMAGES:
            claimed.add(gid)
        if problem:
            rejected.append(Rejection(written, where, "train", problem))
            continue
        k = full_index[n]
        if gid is None:
            reason = (f"GalaxyID {written!r} is not a positive integer" if not _DIGITS.fullmatch(row[0].strip())
                      or int(row[0]) == 0 else f"GalaxyID {written} does not fit in int64")
            rejected.append(Rejection(written, where, "train", reason))
            continue
        bad_text = [c for c, bad in zip(COLUMNS, non_numeric[k]) if bad]
        problem = (f"missing or non-numeric label in {', '.join(bad_text)}" if bad_text
                   else label_problem(labels64[k], tol))
        if problem:
            rejected.append(Rejection(written, where, "train", problem))
        elif gid in several:
            rejected.append(Rejection(written, where, "train", f"GalaxyID {gid} has {len(several[gid])} image files "
                                      f"({readable(', '.join(several[gid]))}); keep one"))
        elif gid in not_files and gid not in images:
            rejected.append(Rejection(written, where, "train", f"image {readable(not_files[gid])}, not a regular file"))
        elif gid not in images or images[gid][0] != TRAIN_IMAGES:
            rejected.append(Rejection(written, f"{TRAIN_IMAGES}/{gid}.jpg", "train",
                                      "image file missing for this label row"))
        else:
            keep.append(k)
            keep_ids.append(gid)
            keep_files.append(str(images[gid][1]))
    for gid, (folder, path) in images.items():
        if folder == TRAIN_IMAGES and gid not in claimed:
            rejected.append(Rejection(readable(path.stem), readable(f"{TRAIN_IMAGES}/{path.name}"), "train",
                                      "image has no label row; not packed"))
    train = pd.DataFrame({"GalaxyID": np.array(keep_ids, dtype=np.int64), "file": keep_files})
    train = pd.concat([train, pd.DataFrame(labels64[keep].astype(np.float32), columns=COLUMNS)], axis=1)
    train = train.sort_values("GalaxyID", kind="stable").reset_index(drop=True)

    test_rows = sorted((gid, str(path)) for gid, (folder, path) in images.items() if folder == TEST_IMAGES)
    test = pd.DataFrame(test_rows, columns=["GalaxyID", "file"])
    test["GalaxyID"] = test["GalaxyID"].astype(np.int64)
    n_train_files = len(inp.images[TRAIN_IMAGES])
    return Catalog(train, test, rejected, n_input=len(rows) + n_train_files - len(claimed) + len(inp.images[TEST_IMAGES]))


def jpeg_problem(data: bytes) -> str | None:
    """Why these bytes are not a usable GZ2 JPEG (424×424, RGB or greyscale, no EXIF orientation), or None.
    Decodes the whole image once."""
    return stored_jpeg_problem(data, IMAGE_SIDE)
