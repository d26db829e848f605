"""Reading and validating the Kaggle GZ2 layout: the label CSV, the two image folders, each JPEG.

Every row or file that cannot be used becomes a `Rejection` with a reason; nothing is dropped silently.
Problems that make the whole input untrustworthy (a wrong CSV header, duplicated GalaxyIDs) raise
`CatalogError` instead, naming the file and the offending ids.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .layout import IMAGE_SIDE
from .schema import COLUMNS, CSV_HEADER, label_problem

LABELS_CSV = "training_solutions_rev1.csv"
TRAIN_IMAGES = "images_training_rev1"
TEST_IMAGES = "images_test_rev1"
IMAGE_SIZE = (IMAGE_SIDE, IMAGE_SIDE)
_ID_FILE = re.compile(r"^(\d+)\.jpg$")


class CatalogError(ValueError):
    """The input cannot be packed at all (as opposed to single rows or files, which are rejected)."""


@dataclass(frozen=True)
class Rejection:
    galaxy_id: str  # as written in the input; may not be an integer
    file: str       # the CSV (with line number) or the image path
    split: str      # train or test
    reason: str


@dataclass
class Catalog:
    train: pd.DataFrame            # GalaxyID (int64), file (str), the 37 labels (float32); ascending id
    test: pd.DataFrame             # GalaxyID, file; ascending id
    rejected: list[Rejection] = field(default_factory=list)
    n_input: int = 0               # label rows + unlabelled training images + test images


def _image_listing(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def read_catalog(data_dir: str | Path, tol: float = 1e-4) -> Catalog:
    """Reads the Kaggle layout under `data_dir`; validates the labels, not yet the JPEGs."""
    data_dir = Path(data_dir)
    csv_path = data_dir / LABELS_CSV
    if not csv_path.is_file():
        raise CatalogError(f"{csv_path}: label file not found (expected the Kaggle layout: {LABELS_CSV}, "
                           f"{TRAIN_IMAGES}/, {TEST_IMAGES}/)")
    train_files = _image_listing(data_dir / TRAIN_IMAGES)
    test_files = _image_listing(data_dir / TEST_IMAGES)
    if not (data_dir / TRAIN_IMAGES).is_dir():
        raise CatalogError(f"{data_dir / TRAIN_IMAGES}: training image folder not found")

    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    header = list(raw.columns)
    if header != CSV_HEADER:
        missing = [c for c in CSV_HEADER if c not in header]
        extra = [c for c in header if c not in CSV_HEADER]
        detail = (f"missing {missing}" if missing else "") + (f" unexpected {extra}" if extra else "")
        raise CatalogError(f"{csv_path}: header is not the Kaggle one ({detail.strip() or 'columns out of order'}); "
                           f"expected GalaxyID, Class1.1 ... Class11.6")
    line = np.arange(len(raw)) + 2  # 1-based, after the header
    ids = raw["GalaxyID"].str.strip()
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        first = dup.unique()[:5]
        where = "; ".join(f"{g} on lines {', '.join(map(str, line[ids.to_numpy() == g]))}" for g in first)
        raise CatalogError(f"{csv_path}: {dup.nunique()} duplicated GalaxyID(s): {where}")

    values = raw[COLUMNS].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    labels64 = values.to_numpy(np.float64)
    rejected: list[Rejection] = []
    keep = []
    for i, gid in enumerate(ids):
        where = f"{csv_path.name}:{line[i]}"
        if not gid.isdigit():
            rejected.append(Rejection(gid, where, "train", f"GalaxyID {gid!r} is not a positive integer"))
            continue
        bad_text = [c for c in COLUMNS if np.isnan(values.at[i, c]) and raw.at[i, c].strip().lower() != "nan"]
        problem = (f"missing or non-numeric label in {', '.join(bad_text)}" if bad_text
                   else label_problem(labels64[i], tol))
        if problem:
            rejected.append(Rejection(gid, where, "train", problem))
            continue
        name = f"{int(gid)}.jpg"
        if name not in train_files:
            rejected.append(Rejection(gid, f"{TRAIN_IMAGES}/{name}", "train", "image file missing for this label row"))
            continue
        keep.append(i)
    labelled = {f"{int(g)}.jpg" for g in ids if g.isdigit()}
    for name in train_files:
        m = _ID_FILE.match(name)
        if not m:
            rejected.append(Rejection(name, f"{TRAIN_IMAGES}/{name}", "train", "file name is not <GalaxyID>.jpg"))
        elif name not in labelled:
            rejected.append(Rejection(m.group(1), f"{TRAIN_IMAGES}/{name}", "train",
                                      "image has no label row; not packed"))
    train = pd.DataFrame({"GalaxyID": ids.iloc[keep].astype(np.int64).to_numpy(),
                          "file": [str(train_files[f"{int(ids.iloc[i])}.jpg"]) for i in keep]})
    train = pd.concat([train, pd.DataFrame(labels64[keep].astype(np.float32), columns=COLUMNS)], axis=1)
    train = train.sort_values("GalaxyID", kind="stable").reset_index(drop=True)

    test_rows = []
    for name, path in test_files.items():
        m = _ID_FILE.match(name)
        if m:
            test_rows.append((int(m.group(1)), str(path)))
        else:
            rejected.append(Rejection(name, f"{TEST_IMAGES}/{name}", "test", "file name is not <GalaxyID>.jpg"))
    test = pd.DataFrame(test_rows, columns=["GalaxyID", "file"]).sort_values("GalaxyID").reset_index(drop=True)
    test["GalaxyID"] = test["GalaxyID"].astype(np.int64)
    unlabelled = len(set(train_files) - labelled)
    return Catalog(train, test, rejected, n_input=len(raw) + unlabelled + len(test_files))


def jpeg_problem(data: bytes) -> str | None:
    """Why these bytes are not a usable GZ2 JPEG, or None. Decodes the whole image once."""
    if not data:
        return "empty file"
    if data[:3] != b"\xff\xd8\xff":
        return "not a JPEG (no JPEG start-of-image marker)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return f"not a JPEG ({im.format})"
            if im.size != IMAGE_SIZE:
                return f"image is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
            if im.mode not in ("RGB", "L"):
                return (f"JPEG colour mode {im.mode} is not supported (only RGB and grayscale decode the same "
                        f"everywhere); convert it to RGB")
            im.load()  # raises on truncated or corrupt entropy-coded data
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        return f"cannot decode JPEG: {exc}"
    if b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def input_fingerprint(data_dir: str | Path, options: dict) -> str:
    """sha256 over the label CSV's bytes, the image files' names and sizes, and the pack options."""
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    h.update((data_dir / LABELS_CSV).read_bytes())
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        for name, path in _image_listing(data_dir / folder).items():
            h.update(f"{folder}/{name}:{path.stat().st_size}\n".encode())
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()
