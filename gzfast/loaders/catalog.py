"""The images a catalogue lists (`predict/embed --catalog FILE`), read in chunks of rows, never whole.

A catalogue is a CSV or Parquet table (told by the file's first bytes, as `pack` tells them) with an id
column and an image-file column; only those two columns are read, in batches, so memory does not grow
with the catalogue's size beyond 8 bytes a row (the hashes of the duplicate check). Paths are relative
to `images` (default: the catalogue's folder) or absolute. Without a file column, a galaxy's image is
`<id>.jpg` or `<id>.png` in `images`.

Ids: integers by the packer's rule (`shard_tools.ids.parse_int_id`) when the run needs them (Kaggle
runs) or when every id of the catalogue is one (`integer` kind, as pack decides); otherwise the stripped
text. A row whose id is empty or unusable, or repeats an earlier row's id, is rejected with its place
(`catalog.csv:12`, `catalog.parquet:row 11`), as an unreadable image is.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shard_tools.errors import UserError
from shard_tools.ids import int_id_problem, parse_int_id

from .folder import Item

PARQUET_MAGIC = b"PAR1"
READ_ROWS = 65_536  # rows read at a time


class CatalogInputError(UserError, ValueError):
    """A catalogue that cannot be read at all (missing, unreadable, no such column)."""


def _kind_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:  # the caller refused a FIFO or device by its type before
            return "parquet" if f.read(4) == PARQUET_MAGIC else "csv"
    except OSError as exc:
        raise CatalogInputError(f"--catalog {path}: cannot read it ({exc.strerror})") from None


def _canonical_ints(texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids, usable) of stripped texts, by the packer's rule (`parse_int_id`), the one rule of ids."""
    parsed = [parse_int_id(t) for t in texts.tolist()]
    ok = np.array([p is not None for p in parsed], dtype=bool)
    return np.array([p or 0 for p in parsed], dtype=np.int64), ok


@dataclass
class RowBatch:
    start: int                   # row number (from 0) of the first row
    ids: pd.Series               # stripped texts
    files: pd.Series | None      # stripped texts, or None (no file column)


@dataclass
class CatalogReader:
    """One catalogue: its file, columns and image folder. `scan()` once before `chunks()`."""
    path: Path
    id_column: str
    file_column: str | None
    images: Path
    integer_ids: bool | None = None   # True: the run needs integer ids; None: as the catalogue's ids are
    rows: int = 0
    repeats: dict[int, str] = field(default_factory=dict)  # row -> reason, for rows whose id repeats one
    digest: str = ""

    def __post_init__(self):
        self.kind = _kind_of(self.path)

    # --- reading ----------------------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return [self.id_column] + ([self.file_column] if self.file_column else [])

    def _check_columns(self, have: list[str]):
        missing = [c for c in self._columns() if c not in have]
        if missing:
            shown = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
            raise CatalogInputError(f"--catalog {self.path}: no column {', '.join(map(repr, missing))} (it has "
                                    f"{shown}); name them with --id-column/--file-column")

    @contextlib.contextmanager
    def _reading(self):
        """Any failure to read the table as one line naming the catalogue."""
        try:
            yield
        except CatalogInputError:
            raise
        except (UnicodeDecodeError, ValueError, OSError, pd.errors.ParserError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CatalogInputError(f"--catalog {self.path}: not a readable {'Parquet' if self.kind == 'parquet' else 'CSV'} "
                                    f"table ({detail})") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid and others on a damaged file
            raise CatalogInputError(f"--catalog {self.path}: not a readable Parquet table ({exc})") from None

    def names(self) -> list[str]:
        """The table's column names (its header, or the Parquet schema), nothing else read. A Parquet id
        column of floating-point numbers is refused, as pack refuses it: they lose digits."""
        with self._reading():
            if self.kind == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq
                schema = pq.read_schema(self.path)
                if self.id_column in schema.names and pa.types.is_floating(schema.field(self.id_column).type):
                    raise CatalogInputError(f"--catalog {self.path}: id column {self.id_column!r} holds floating-"
                                            f"point numbers, which lose digits; store the ids as integers or text")
                return list(schema.names)
            return list(map(str, pd.read_csv(self.path, nrows=0, encoding="utf-8-sig").columns))

    def _frames(self) -> Iterator[pd.DataFrame]:
        self._check_columns(self.names())
        cols = self._columns()
        with self._reading():
            if self.kind == "parquet":
                import pyarrow.parquet as pq
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=READ_ROWS, columns=cols):
                    # Arrow types keep int64 ids exact where a column has nulls (numpy would make them floats),
                    # as pack reads them
                    yield batch.to_pandas(types_mapper=pd.ArrowDtype)
                return
            yield from pd.read_csv(self.path, usecols=cols, dtype=str, keep_default_na=False, chunksize=READ_ROWS,
                                   encoding="utf-8-sig")

    def batches(self) -> Iterator[RowBatch]:
        start = 0
        for frame in self._frames():
            files = _texts(frame[self.file_column]) if self.file_column else None
            yield RowBatch(start, _texts(frame[self.id_column]), files)
            start += len(frame)

    def where(self, row: int) -> str:
        """A row's place: `file:line` for CSV (the header is line 1), `file:row N` for Parquet."""
        return f"{self.path.name}:{row + 2}" if self.kind == "csv" else f"{self.path.name}:row {row + 1}"

    # --- the first pass: rows, id kind, repeated ids -----------------------------------------------
    def canonical(self, ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(canonical ids: int64 or object texts, usable) of a batch's id texts."""
        if self.integer_ids:
            return _canonical_ints(ids)
        return ids.to_numpy(object), (ids != "").to_numpy(bool)

    def scan(self) -> CatalogReader:
        """Counts the rows, settles the id kind, finds the rows whose id repeats an earlier row's and
        fingerprints the file: one pass over the id column (one more only when some hashes are shared)."""
        as_int, as_text, all_int = [], [], True
        for b in self.batches():
            values, ok = _canonical_ints(b.ids)
            all_int = all_int and bool((ok | (b.ids == "").to_numpy()).all())
            as_int.append(np.where(ok, pd.util.hash_array(values), 0).astype(np.uint64))
            if self.integer_ids is not True:
                text = b.ids.to_numpy(object)
                as_text.append(np.where(text != "", pd.util.hash_array(text), 0).astype(np.uint64))
        if self.integer_ids is None:
            self.integer_ids = all_int
        parts = as_int if self.integer_ids else as_text
        flat = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        del as_int, as_text
        self.rows = len(flat)
        unique, counts = np.unique(flat[flat != 0], return_counts=True)
        self._find_repeats(unique[counts > 1], flat)
        h = hashlib.blake2b(digest_size=16)
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.digest = h.hexdigest()
        return self

    def _find_repeats(self, suspects: np.ndarray, flat: np.ndarray):
        """Rows whose hash is shared: compare the ids themselves (a hash collision is not a repeat)."""
        if not len(suspects):
            return
        first: dict = {}
        for b in self.batches():
            values, _ = self.canonical(b.ids)
            for i in np.flatnonzero(np.isin(flat[b.start:b.start + len(values)], suspects)):
                row, key = b.start + int(i), _plain(values[i])
                if key in first:
                    self.repeats[row] = f"id {key} repeats {self.where(first[key])}"
                else:
                    first[key] = row

    # --- the galaxies of the chunks ----------------------------------------------------------------
    def chunks(self, size: int, wanted) -> Iterator[tuple[int, list[Item]]]:
        """(chunk number, its Items) for the chunks in `wanted` (rows [k*size, (k+1)*size)), in order, from
        one pass over the file; the other chunks are read past without looking at their rows."""
        wanted = sorted(set(wanted))
        if not wanted:
            return
        pending: list[RowBatch] = []
        for b in self.batches():
            pending.append(b)
            while pending and wanted:
                k = wanted[0]
                lo, hi = k * size, min((k + 1) * size, self.rows)
                end = pending[-1].start + len(pending[-1].ids)
                if end < hi:
                    break
                yield k, [item for p in pending for item in self._items(p, lo, hi)]
                wanted.pop(0)
            if not wanted:
                return
            nxt = wanted[0] * size
            pending = [p for p in pending if p.start + len(p.ids) > nxt]

    def _items(self, b: RowBatch, lo: int, hi: int) -> list[Item]:
        lo, hi = max(lo, b.start), min(hi, b.start + len(b.ids))
        if lo >= hi:
            return []
        part = slice(lo - b.start, hi - b.start)
        written = b.ids.iloc[part].tolist()
        values, ok = self.canonical(b.ids.iloc[part].reset_index(drop=True))
        files = b.files.iloc[part].tolist() if b.files is not None else [None] * (hi - lo)
        return [self._item(row, _plain(values[j]) if ok[j] else None, written[j], files[j])
                for j, row in enumerate(range(lo, hi))]

    def _item(self, row: int, gid, written: str, cell: str | None) -> Item:
        here = self.where(row)
        shown = f"{here}: {cell}" if cell else here
        if gid is None:
            return Item(None, None, shown, int_id_problem(written) if written else "empty id")
        if row in self.repeats:
            return Item(gid, None, shown, self.repeats[row])
        if cell is not None:
            if not cell:
                return Item(gid, None, shown, "no image file named")
            if "\0" in cell:
                return Item(gid, None, shown, "image path holds a NUL character")
            return Item(gid, os.path.join(self.images, cell), shown)  # an absolute cell stays itself
        found = [p for p in (os.path.join(self.images, f"{gid}{ext}") for ext in (".jpg", ".png")) if os.path.lexists(p)]
        if len(found) != 1:
            why = f"image file missing ({gid}.jpg or {gid}.png in {self.images})" if not found else \
                f"both {gid}.jpg and {gid}.png are in {self.images}; keep one"
            return Item(gid, None, here, why)
        return Item(gid, found[0], f"{here}: {os.path.basename(found[0])}")


def _texts(column: pd.Series) -> pd.Series:
    """A column as stripped texts ('' for empty or null), indexed from 0."""
    s = column.astype(object)
    return s.where(s.notna(), "").astype(str).str.strip().reset_index(drop=True)


def _plain(value):
    """A numpy scalar as the Python value it holds (ids go into sets, messages and tables)."""
    return value.item() if isinstance(value, np.generic) else value
