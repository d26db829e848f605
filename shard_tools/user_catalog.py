"""Reading any catalogue (CSV or Parquet) against a decision tree: ids, image files, labels per row.

A catalogue has an id column, an image-file column (paths relative to `--images`, or absolute inside it;
a tree without a file column finds `<id>.jpg` or `<id>.png` there) and per-answer label columns spelled
as the tree says: vote counts (integers; they also give the cumulative fractions) or fractions (the
catalogue's per-question ones, or Kaggle's cumulative ones for gz2-kaggle). Columns missing, an
unreadable file or duplicated ids stop the pack in one line; a bad row (its counts, fractions, image path)
is rejected with its reason and `file:line`. Images themselves are checked when shards are written.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import CatalogError, Rejection, digest_paths, readable, regular_file_problem
from .ids import canonical, id_kind, int_id_problem, sample_ids
from .images import FITS
from .inputs import kind_reason, not_regular
from .layout import IMAGE_SIDE
from .trees import Tree

LABEL_SOURCES = ("counts", "fractions")
_PARQUET_MAGIC = b"PAR1"
_SHOWN = 4  # column names listed before "(+N more)"


@dataclass(frozen=True)
class CatalogSpec:
    """What `pack --catalog` reads, and how."""
    catalog: Path
    images: Path
    tree: Tree
    id_column: str | None = None     # None: the tree's
    file_column: str | None = None   # None: the tree's (None there too: <id>.jpg / <id>.png)
    labels: str | None = None        # counts, fractions, or None: counts when the tree's count columns are there
    side: int = IMAGE_SIDE
    fit: str = "crop"

    def check(self):
        if self.labels not in (None, *LABEL_SOURCES):
            raise CatalogError(f"--labels must be one of {', '.join(LABEL_SOURCES)}, got {self.labels!r}")
        if self.fit not in FITS:
            raise CatalogError(f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not 16 <= self.side <= 4096:
            raise CatalogError(f"--side must be between 16 and 4096 pixels, got {self.side}")


@dataclass
class CatalogRows:
    """The usable rows of a catalogue (ascending sample id) and the rest, rejected."""
    ids: np.ndarray               # int64 sample ids (ids.sample_ids)
    names: list[str]              # canonical catalogue ids (text)
    keys: list                    # canonical ids as the validation hash reads them (int or str)
    files: list[str]              # absolute image paths
    labels: np.ndarray            # N×n float32 cumulative fractions
    counts: np.ndarray | None     # N×n float32
    id_kind: str
    id_column: str
    source: str                   # counts or fractions
    rejected: list[Rejection] = field(default_factory=list)
    n_input: int = 0
    catalog_bytes: bytes = b""
    file_states: list[str] = field(default_factory=list)  # per input row, what its image was when read


def _short(names: list[str]) -> str:
    shown = ", ".join(readable(n) for n in names[:_SHOWN])
    return shown + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


# --- the file ----------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise CatalogError(f"{path}: catalogue not found; point --catalog at a CSV or Parquet file")
    problem = regular_file_problem(path, "catalogue")
    if problem:
        raise CatalogError(f"{path}: {problem}; point --catalog at a CSV or Parquet file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalogue ({exc.strerror}); check its permissions") from None


def _csv_text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CatalogError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the catalogue as "
                           f"UTF-8") from None


def _parse_csv(path: Path, text: str, text_columns=(), nrows: int | None = None) -> pd.DataFrame:
    """The CSV's table: `text_columns` (ids, file names) as texts, the rest as pandas infers (numbers parse
    fast; a column holding text stays text and is checked cell by cell). Only an empty cell is missing."""
    try:
        return pd.read_csv(io.StringIO(text), dtype={c: str for c in text_columns}, keep_default_na=False,
                           na_values=[""], nrows=nrows)
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{path}: empty catalogue (no header line)") from None
    except (pd.errors.ParserError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"{path}: not a readable CSV ({detail}); fix that line") from None


def _parse_parquet(path: Path, data: bytes) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        # Arrow types keep int64 ids exact even where a column has nulls (numpy would make them floats)
        return pq.read_table(io.BytesIO(data)).to_pandas(types_mapper=pd.ArrowDtype)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise CatalogError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None


def read_table(spec: CatalogSpec) -> tuple[bytes, pd.DataFrame, str, tuple[str, str | None, str, list[str]]]:
    """The catalogue's bytes, its table, 'csv' or 'parquet' (told by the file's first bytes), and its
    columns (`check_columns`: checked before a CSV's rows are parsed)."""
    data = _read_bytes(spec.catalog)
    if data.startswith(_PARQUET_MAGIC):
        frame = _parse_parquet(spec.catalog, data)
        return data, frame, "parquet", check_columns(spec, frame)
    text = _csv_text(spec.catalog, data)
    columns = check_columns(spec, _parse_csv(spec.catalog, text, nrows=0))
    return data, _parse_csv(spec.catalog, text, [c for c in columns[:2] if c]), "csv", columns


def _where(path: Path, kind: str, row: int) -> str:
    """A row's place: `file:line` for CSV (the header is line 1), `file:row N` for Parquet."""
    return f"{path.name}:{row + 2}" if kind == "csv" else f"{path.name}:row {row + 1}"


# --- columns -----------------------------------------------------------------------------------------

def _label_source(spec: CatalogSpec, columns: set[str]) -> tuple[str, list[str]]:
    """'counts' or 'fractions', and the label columns to read."""
    tree = spec.tree
    counts, fractions = tree.count_columns(), tree.fraction_columns()
    if spec.labels == "counts" and counts is None:
        raise CatalogError(f"{spec.catalog}: --labels counts, but {tree.name} catalogues carry fractions only "
                           f"(the tree names no count columns); use --labels fractions")
    if spec.labels == "counts" or (spec.labels is None and counts and all(c in columns for c in counts)):
        return "counts", counts
    return "fractions", fractions


def check_columns(spec: CatalogSpec, frame: pd.DataFrame) -> tuple[str, str | None, str, list[str]]:
    """(id column, file column or None, label source, label columns); CatalogError naming every missing one."""
    columns = set(map(str, frame.columns))
    id_col = spec.id_column or spec.tree.id_column
    file_col = spec.file_column or spec.tree.file_column
    source, label_cols = _label_source(spec, columns)
    missing = []
    if id_col not in columns:
        missing.append(f"id column {id_col!r}")
    if file_col is not None and file_col not in columns:
        missing.append(f"file column {file_col!r}")
    absent = [c for c in label_cols if c not in columns]
    if absent:
        missing.append(f"{len(absent)} {source[:-1]} column(s) of the {spec.tree.name} tree ({_short(absent)})")
        counts = spec.tree.count_columns()
        if spec.labels is None and source == "fractions" and counts:
            missing[-1] += f", nor all its count columns ({_short([c for c in counts if c not in columns])})"
    if missing:
        raise CatalogError(f"{spec.catalog}: missing {'; '.join(missing)}; the file has {_short(list(map(str, frame.columns)))}; "
                           f"name the columns with --id-column/--file-column/--labels, or pick another --tree")
    return id_col, file_col, source, label_cols


# --- cells -------------------------------------------------------------------------------------------

def _text_series(series: pd.Series) -> pd.Series:
    """A column as stripped texts ('' for empty or null), vectorised."""
    obj = series.astype(object)
    return obj.where(obj.notna(), "").astype(str).str.strip()


def _texts(series: pd.Series) -> list[str]:
    return _text_series(series).tolist()


def _numbers(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """N×k float64 values (NaN for empty) and where a cell holds text that is not a number."""
    values = np.empty((len(frame), len(columns)))
    bad = np.zeros(values.shape, dtype=bool)
    for j, col in enumerate(columns):
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            values[:, j] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        text = _text_series(s)
        values[:, j] = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
        bad[:, j] = np.isnan(values[:, j]) & (text != "").to_numpy() & (text.str.lower() != "nan").to_numpy()
    return values, bad


def _ids(spec: CatalogSpec, frame: pd.DataFrame, id_col: str, where) -> tuple[list[str], str, list]:
    """Per row: the id as written, the catalogue's id kind, and the canonical id (None if unusable)."""
    column = frame[id_col]
    if pd.api.types.is_float_dtype(column):
        raise CatalogError(f"{spec.catalog}: id column {id_col!r} holds floating-point numbers, which lose digits; "
                           f"store the ids as integers or text")
    written = _texts(column)
    kind = id_kind(written)
    canon = [canonical(w, kind) for w in written]
    lines: dict = {}
    for i, c in enumerate(canon):
        if c is not None:
            lines.setdefault(c, []).append(i)
    dup = {c: v for c, v in lines.items() if len(v) > 1}
    if dup:
        parts = [f"{readable(str(c))} on {', '.join(where(i) for i in v)}" for c, v in list(dup.items())[:5]]
        raise CatalogError(f"{spec.catalog}: {len(dup)} duplicated id(s) in column {id_col}: {'; '.join(parts)}; "
                           f"keep one row per galaxy")
    return written, kind, canon


# --- image files -------------------------------------------------------------------------------------

def _by_id(images: Path, canon, root: str) -> tuple[str | None, str | None]:
    found = [f"{canon}{ext}" for ext in (".jpg", ".png") if os.path.lexists(os.path.join(images, f"{canon}{ext}"))]
    if len(found) == 1:
        return resolve_image(images, found[0], root)
    if found:
        return None, f"both {found[0]} and {found[1]} are in --images; keep one"
    return None, f"image file missing ({canon}.jpg or {canon}.png in --images)"


def resolve_image(images: Path, cell: str, root: str | None = None) -> tuple[str | None, str | None]:
    """The real path of the image a catalogue names (relative to `images`, or absolute inside it), or why it
    is unusable. Nothing is read: the type is told by stat, so a FIFO is rejected without being opened.
    `root` is `images` resolved (pass it when resolving many)."""
    if not cell:
        return None, "no image file named"
    if "\0" in cell:
        return None, "image path holds a NUL character"
    root = root or os.path.realpath(images)
    real = os.path.realpath(os.path.join(images, cell))  # an absolute cell stays itself
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return None, f"image path {cell} resolves outside --images {images}; keep images inside that folder"
    try:
        kind = not_regular(real)
    except FileNotFoundError:
        return None, f"image file missing: {cell}"
    except OSError as exc:  # a symlink loop, a name too long, no permission
        return None, f"cannot look at image {cell} ({exc.strerror})"
    return (None, kind_reason(kind)) if kind else (real, None)


def _files(spec: CatalogSpec, frame: pd.DataFrame, file_col: str | None, canon: list, where
           ) -> list[tuple[str | None, str | None]]:
    """Per row, (the image's real path, None) or (None, why it has no usable image)."""
    cells = _texts(frame[file_col]) if file_col else None
    root = os.path.realpath(spec.images)
    out, first_use = [], {}
    for i, c in enumerate(canon):
        if c is None:
            out.append((None, None))
            continue
        path, problem = resolve_image(spec.images, cells[i], root) if cells is not None else _by_id(spec.images, c, root)
        if path is not None and path in first_use:
            path, problem = None, f"same image file as {where(first_use[path])}: {os.path.basename(path)}"
        elif path is not None:
            first_use[path] = i
        out.append((path, problem))
    return out


# --- labels ------------------------------------------------------------------------------------------

def _listed(tree: Tree, mask: np.ndarray, values: np.ndarray | None = None) -> str:
    cols = np.flatnonzero(mask)
    return ", ".join(tree.columns[j] if values is None else f"{tree.columns[j]}={values[j]:g}" for j in cols)


def _count_problem(tree: Tree, counts: np.ndarray, bad: np.ndarray) -> str | None:
    """Why one row of vote counts is unusable, naming the answer, or None."""
    if (np.isnan(counts) | bad).any():
        return f"missing or non-numeric count in {_listed(tree, np.isnan(counts) | bad)}"
    if not np.isfinite(counts).all():
        return f"non-finite count in {_listed(tree, ~np.isfinite(counts))}"
    if (counts < 0).any():
        return f"negative count: {_listed(tree, counts < 0, counts)}"
    if (counts != np.round(counts)).any():
        return f"non-integer count: {_listed(tree, counts != np.round(counts), counts)}"
    for q in tree.questions:
        if q.parent is None:
            continue
        over = [j for j in q.columns if counts[j] > counts[q.parent]]
        if over:
            j = over[0]
            return (f"{tree.columns[j]} counted {counts[j]:g} times, more often than {tree.columns[q.parent]}="
                    f"{counts[q.parent]:g}, the answer that asks {q.name}")
    if not any(counts[list(q.columns)].sum() > 0 for q in tree.questions if q.parent is None):
        return "no votes (every count of the questions asked of everyone is 0)"
    return None


def _fraction_problem(tree: Tree, frac: np.ndarray, bad: np.ndarray, tol: float) -> str | None:
    """Why one row of catalogue fractions is unusable before conversion, or None."""
    if bad.any():
        return f"non-numeric fraction in {_listed(tree, bad)}"
    if np.isinf(frac).any():
        return f"non-finite fraction in {_listed(tree, np.isinf(frac))}"
    out = (frac < -tol) | (frac > 1 + tol)
    if out.any():
        return f"fraction out of [0, 1]: {_listed(tree, out, frac)}"
    if tree.fractions == "per-question" and not (np.nan_to_num(frac) > 0).any():
        return "no votes (every fraction is 0 or empty)"
    return None


def _counts_fine(tree: Tree, v: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per row, whether `_count_problem` would find nothing (vectorised: the per-row words only for the rest)."""
    with np.errstate(invalid="ignore"):
        ok = ~bad.any(1) & np.isfinite(v).all(1) & (v >= 0).all(1) & (v == np.round(v)).all(1)
        roots = np.zeros(len(v), dtype=bool)
        for q in tree.questions:
            if q.parent is None:
                roots |= v[:, list(q.columns)].sum(1) > 0
            else:
                ok &= ~(v[:, list(q.columns)] > v[:, [q.parent]]).any(1)
    return ok & roots


def _fractions_fine(tree: Tree, v: np.ndarray, bad: np.ndarray, tol: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = ~bad.any(1) & ~np.isinf(v).any(1) & ~((v < -tol) | (v > 1 + tol)).any(1)
    return ok & (np.nan_to_num(v) > 0).any(1)


def _labels(spec: CatalogSpec, frame: pd.DataFrame, source: str, columns: list[str], tol: float):
    """(N×n cumulative fractions, N×n counts or None, per-row problem or None)."""
    tree = spec.tree
    values, bad = _numbers(frame, columns)
    problems: list[str | None] = [None] * len(values)
    if source == "counts":
        for i in np.flatnonzero(~_counts_fine(tree, values, bad)):
            problems[i] = _count_problem(tree, values[i], bad[i])
        labels = tree.fractions_from_counts(np.where(np.isfinite(values) & ~bad, values, 0.0))
        counts = values
    elif tree.fractions == "per-question":
        for i in np.flatnonzero(~_fractions_fine(tree, values, bad, tol)):
            problems[i] = _fraction_problem(tree, values[i], bad[i], tol)
        labels = tree.cumulative_from_per_question(np.where(bad | np.isinf(values), 0.0, values))
        counts = None
    else:  # cumulative already (gz2-kaggle): an empty cell is a missing label
        missing = bad | np.isnan(values)
        problems = [f"missing or non-numeric label in {_listed(tree, missing[i])}" if missing[i].any() else None
                    for i in range(len(values))]
        labels, counts = values, None
    with np.errstate(invalid="ignore"):
        ok = tree.check_constraints(labels, tol)
    for i in np.flatnonzero(~ok):
        problems[i] = problems[i] or tree.label_problem(labels[i], tol)
    return labels, counts, problems


# --- the whole catalogue -----------------------------------------------------------------------------

def read_user_catalog(spec: CatalogSpec, tol: float = 1e-4) -> CatalogRows:
    """Reads and validates a catalogue (not yet the image bytes). Bad rows are rejected with a reason;
    missing columns, an unreadable file or duplicated ids raise CatalogError."""
    spec.check()
    if not spec.images.is_dir():
        what = "is not a folder" if spec.images.exists() else "not found"
        raise CatalogError(f"{spec.images}: --images folder {what}; point --images at the folder the catalogue's "
                           f"image paths are relative to")
    data, frame, kind, (id_col, file_col, source, label_cols) = read_table(spec)

    def where(i):
        return _where(spec.catalog, kind, i)

    written, id_kind_, canon = _ids(spec, frame, id_col, where)
    files = _files(spec, frame, file_col, canon, where)
    labels, counts, label_problems = _labels(spec, frame, source, label_cols, tol)
    rows = CatalogRows(np.zeros(0, np.int64), [], [], [], labels, counts, id_kind_, id_col, source, n_input=len(frame),
                       catalog_bytes=data)
    keep = []
    for i in range(len(frame)):
        path, file_problem = files[i]
        rows.file_states.append(str(path) if path else f"{file_problem}")
        if canon[i] is None:
            reason = "empty id" if not written[i] else int_id_problem(written[i])
        else:
            reason = label_problems[i] or file_problem
        if reason:
            rows.rejected.append(Rejection(readable(written[i]), where(i), "train", reason))
        else:
            keep.append(i)
    keep.sort(key=lambda i: canon[i])  # ascending catalogue id: ascending sample id, for both id kinds
    # string ids: ranks among all of the catalogue's ids, so a rejected row shifts no other galaxy's sample id
    sid = sample_ids([c for c in canon if c is not None], id_kind_)
    rows.ids = np.array([sid[canon[i]] for i in keep], dtype=np.int64)
    rows.names = [str(canon[i]) for i in keep]
    rows.keys = [canon[i] for i in keep]
    rows.files = [str(files[i][0]) for i in keep]
    rows.labels = labels[keep].astype(np.float32)
    rows.counts = None if counts is None else counts[keep].astype(np.float32)
    return rows


def catalog_fingerprint(rows: CatalogRows, options: dict, digests: dict[str, str]) -> str:
    """sha256 over the catalogue's bytes, each row's image (path and blake2b, or why it had none) and the
    options (tree, columns, label source, side, fit and the pack options)."""
    h = hashlib.sha256(rows.catalog_bytes)
    for state in rows.file_states:
        h.update(f"{state}:{digests.get(state, '-')}\n".encode("utf-8", "surrogateescape"))
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()


def hash_row_images(rows: CatalogRows) -> dict[str, str]:
    """{path: size:blake2b} of every image a row names (also of rows rejected for their labels: the
    fingerprint must change when any of them does)."""
    paths = sorted({Path(s) for s in rows.file_states if os.path.isabs(s)})
    return digest_paths(paths)
