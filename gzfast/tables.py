"""Chunked, resumable output tables: what predict and embed write, whatever the catalogue's size.

    OUT.parts/settings.json            what the output is computed from (command, checkpoint, input, flags)
    OUT.parts/chunk-000000.parquet     one per finished chunk of galaxies, written atomically; its schema
                                       metadata carries the chunk's rejected files
    OUT.parts/.lock                    held (flock) by the command writing OUT

Each chunk is written as it completes, so a killed command (even `kill -9`) loses at most the chunk in
progress; started again with the same settings it skips the chunks whose part exists. Started with other
settings over the same OUT it refuses, naming what differs. At the end the parts are streamed, in chunk
order (or merged by a sorted key: the Kaggle submission is sorted by GalaxyID), into OUT through one
pyarrow writer (Parquet when OUT ends in `.parquet`, CSV otherwise), written atomically, then the parts
are removed. Only names this module writes are ever removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shard_tools.layout import TMP_MARK, atomic_path, write_atomic

from .outputs import METADATA_KEY, OutputError

FORMAT = "gzfast-chunks-v1"
SETTINGS = "settings.json"
LOCK = ".lock"
REJECTED_KEY = b"gzfast_rejected"
_CHUNK = re.compile(r"chunk-([0-9]{6,})\.parquet")
MERGE_ROWS = 1 << 20   # rows held across all parts while merging sorted parts


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def is_parquet(out: Path) -> bool:
    return out.suffix.lower() == ".parquet"


class ChunkedTable:
    """The output `out` of `command`, built from numbered chunks. `settings` identify what it is computed
    from; `sort_key` (a column) makes the assembled table sorted by it (each part must be sorted)."""

    def __init__(self, out: Path, command: str, settings: dict, sort_key: str | None = None, float_format="%.6f"):
        self.out, self.command, self.settings = Path(out), command, settings
        self.parts = parts_folder(self.out)
        self.sort_key, self.float_format = sort_key, float_format
        self._lock_fd = None

    # --- the parts folder ---------------------------------------------------------------------------
    def _record(self) -> dict:
        return {"format": FORMAT, "command": self.command, "out": self.out.name, "settings": self.settings}

    def prepare(self) -> set[int]:
        """Creates the parts folder (or checks that the one there is this command's, with these settings),
        takes its lock and clears stale temp files; returns the finished chunks."""
        p = self.parts
        if p.exists() or p.is_symlink():
            if not p.is_dir() or p.is_symlink() or not (p / SETTINGS).is_file():
                raise OutputError(f"{p} exists and was not written by {self.command} (no {SETTINGS}); move it away "
                                  f"or pick another --out")
            try:
                theirs = json.loads((p / SETTINGS).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                theirs = None
            if not isinstance(theirs, dict) or theirs.get("format") != FORMAT or theirs.get("command") != self.command:
                raise OutputError(f"{p} exists and was not written by {self.command}; move it away or pick another --out")
            self._lock()
            if theirs.get("settings") != self.settings:
                raise OutputError(f"--out {self.out}: an unfinished {self.command} with other settings is in {p} "
                                  f"({differences(theirs.get('settings') or {}, self.settings)}); run that command "
                                  f"again to finish it, or delete {p} to start over")
        else:
            p.mkdir(parents=True)
            self._lock()
            write_atomic(p / SETTINGS, json.dumps(self._record(), indent=1) + "\n")
        for stale in [*p.iterdir(), *self.out.parent.iterdir()]:
            ours = stale.parent == p or stale.name.startswith(f".{self.out.name}{TMP_MARK}")
            if ours and stale.name.startswith(".") and TMP_MARK in stale.name:  # a killed write's temp file
                with contextlib.suppress(OSError):
                    stale.unlink()
        return self.done()

    def _lock(self):
        fd = os.open(self.parts / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"--out {self.out}: another {self.command} is writing it (pid {pid}); wait for it or "
                              f"pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def done(self) -> set[int]:
        if not self.parts.is_dir():
            return set()
        return {int(m.group(1)) for m in map(_CHUNK.fullmatch, os.listdir(self.parts)) if m}

    def part(self, k: int) -> Path:
        return self.parts / f"chunk-{k:06d}.parquet"

    def write(self, k: int, table: pa.Table, rejected: list[tuple[str, str, str]]):
        """Chunk `k`: its rows and its rejected files (id, file, reason), in one atomic file."""
        meta = {REJECTED_KEY: json.dumps(rejected).encode()}
        with atomic_path(self.part(k)) as tmp, open(tmp, "wb") as f:
            pq.write_table(table.replace_schema_metadata(meta), f)

    # --- the assembled output -----------------------------------------------------------------------
    def _read_part(self, k: int) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.part(k))
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors on a damaged file
            raise OutputError(f"{self.part(k)}: a damaged part ({exc}); delete it and run the command again to "
                              f"redo that chunk") from None

    def rejected(self, chunks: int) -> list[tuple[str, str, str]]:
        out = []
        for k in range(chunks):
            meta = self._read_part(k).schema_arrow.metadata or {}
            out += [tuple(r) for r in json.loads(meta.get(REJECTED_KEY, b"[]"))]
        return out

    def rows(self, chunks: int) -> int:
        return sum(self._read_part(k).metadata.num_rows for k in range(chunks))

    def _batches(self, chunks: int):
        files = [self._read_part(k) for k in range(chunks)]
        if self.sort_key is None or len(files) == 1:
            for f in files:
                yield from f.iter_batches()
            return
        yield from merge_sorted([f.iter_batches(batch_size=max(1024, MERGE_ROWS // len(files))) for f in files],
                                self.sort_key)

    def assemble(self, chunks: int, metadata: dict) -> int:
        """Writes OUT from parts 0..chunks-1 (atomically); returns the number of rows."""
        schema = self._read_part(0).schema_arrow.remove_metadata().with_metadata(
            {METADATA_KEY: json.dumps({"command": self.command, **metadata}).encode()})
        n = 0
        with atomic_path(self.out) as tmp, open(tmp, "wb") as f:
            writer = pq.ParquetWriter(f, schema) if is_parquet(self.out) else None
            for batch in self._batches(chunks):
                batch = pa.Table.from_batches([batch]).cast(schema.remove_metadata()).replace_schema_metadata(schema.metadata)
                if writer is not None:
                    writer.write_table(batch)
                else:
                    f.write(batch.to_pandas().to_csv(index=False, header=n == 0, float_format=self.float_format,
                                                     lineterminator="\n").encode())
                n += batch.num_rows
            if writer is not None:
                writer.close()
            elif n == 0:
                f.write((",".join(schema.names) + "\n").encode())
        return n

    def remove_parts(self):
        """The parts, the settings and the lock go (only names written here); the folder if then empty."""
        for name in os.listdir(self.parts):
            if _CHUNK.fullmatch(name) or name in (SETTINGS, LOCK):
                with contextlib.suppress(FileNotFoundError):
                    (self.parts / name).unlink()
        self.release()
        with contextlib.suppress(OSError):
            self.parts.rmdir()


def merge_sorted(readers: list, key: str):
    """Record batches of several streams, each sorted by `key` with keys unique across streams, merged into
    one sorted stream: every round takes, from each stream's buffered rows, those up to the smallest of the
    buffers' last keys (no later row of any stream can come before them)."""
    buffers = [next(r, None) for r in readers]
    while True:
        live = [i for i, b in enumerate(buffers) if b is not None]
        if not live:
            return
        cutoff = min(b[key][-1].as_py() for b in (buffers[i] for i in live))
        taken = []
        for i in live:
            keys = buffers[i][key].to_numpy(zero_copy_only=False)
            n = int(np.searchsorted(keys, cutoff, side="right"))
            taken.append(buffers[i].slice(0, n))
            rest = buffers[i].slice(n)
            buffers[i] = rest if rest.num_rows else next(readers[i], None)
            while buffers[i] is not None and buffers[i].num_rows == 0:
                buffers[i] = next(readers[i], None)
        table = pa.Table.from_batches([t for t in taken if t.num_rows])
        if table.num_rows:
            yield from table.sort_by(key).to_batches()


def differences(theirs: dict, ours: dict) -> str:
    """`key: old -> new` for each setting that differs (at most three named)."""
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    shown = [f"{k}: {_short(theirs.get(k))} -> {_short(ours.get(k))}" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]
