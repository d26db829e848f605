"""Galaxy ids: the integer rule, string ids and their sample ids, the id table, and the validation split.

A shard's key and its `.i64` must be an int64 (DALI hands `.i64` to prediction) and a key holds no dot.
Integer ids (Kaggle's GalaxyID, GZ2's dr7objid) are numbers: `0104816` and `104816` are one galaxy, and
the key is the canonical int. A catalogue whose ids are not all integers (DECaLS' `iauname`, e.g.
`J000000.80+004200.0`) is a string-id catalogue: each galaxy's sample id is its rank (from 1) in the
sorted list of the catalogue's distinct ids, and the set carries an id table (`ids.csv`: sample id ->
catalogue id) to map predictions back.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable

MAX_ID = 2**63 - 1  # ids travel as int64 (.i64)
ID_TABLE = "ids.csv"
ID_KINDS = ("integer", "string")
_DIGITS = re.compile(r"[0-9]+", re.ASCII)  # str.isdigit() also takes '²' and Arabic-Indic digits


def parse_int_id(text: str) -> int | None:
    """The positive int64 id written as `text` (surrounding blanks allowed), or None."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def int_id_problem(text: str) -> str:
    """Why `text` is not an integer id (for a rejection's reason)."""
    written = text.strip()
    if _DIGITS.fullmatch(written) and int(written) > MAX_ID:
        return f"id {written} does not fit in int64"
    return f"id {written!r} is not a positive integer"


def id_kind(written: Iterable[str]) -> str:
    """'integer' when every non-empty id is a positive int64, else 'string'."""
    return "integer" if all(parse_int_id(w) is not None for w in written if w.strip()) else "string"


def canonical(written: str, kind: str) -> int | str | None:
    """The id as the set knows it: an int for integer ids, the stripped text for string ids; None if empty
    or (integer kind) not an integer."""
    text = written.strip()
    if not text:
        return None
    return parse_int_id(text) if kind == "integer" else text


def sample_ids(ids: Iterable[int | str], kind: str) -> dict[int | str, int]:
    """Catalogue id -> sample id: the id itself for integer ids, the rank (from 1) in sorted order for strings."""
    distinct = sorted(set(ids))
    if kind == "integer":
        return {i: int(i) for i in distinct}
    return {s: rank for rank, s in enumerate(distinct, start=1)}


def is_val(catalog_id: int | str, val_fraction: float) -> bool:
    """The deterministic validation rule: a hash of the catalogue id (canonical), independent of row order.
    For integer ids it is the rule every set packed so far used."""
    digest = hashlib.blake2b(f"gz2-val:{catalog_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def id_table_text(names: dict[int, str], id_column: str) -> str:
    """The id table's CSV text: `sample_id,<id_column>`, ascending sample id."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", id_column])
    writer.writerows((sid, names[sid]) for sid in sorted(names))
    return buf.getvalue()


def parse_id_table(data: bytes, where: str) -> dict[int, str]:
    """Sample id -> catalogue id from an id table's bytes; ValueError naming `where` and the line."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if not header or len(header) != 2 or header[0] != "sample_id":
        raise ValueError(f"{where}: not an id table (header sample_id,<id column> expected)")
    out = {}
    for n, row in enumerate(reader, start=2):
        if len(row) != 2 or parse_int_id(row[0]) is None:
            raise ValueError(f"{where}:{n}: not `sample_id,catalogue id`")
        out[int(row[0])] = row[1]
    return out
