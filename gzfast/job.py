"""The one loop of predict and embed: chunks of a source through the model into a chunked table, on one
process or on each rank of `accelerate launch` (rank r takes chunks r, r + world, ...; a chunk's batches
are the same whichever rank computes it, so the table is the one a single process writes).

Rank 0 checks the output and prepares the table, then tells the others whether to go on; every rank
computes its chunks and writes their parts; the ranks then share their outcome (a rank's error becomes
every rank's one line) and rank 0 assembles the output. A progress bar of galaxies (rate and time left)
covers rank 0's share.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from shard_tools.errors import UserError
from shard_tools.layout import write_atomic

from .inference import InferenceError, Predictor, speed_line
from .outputs import check_output, written_by
from .sources import Source
from .tables import ChunkedTable, is_parquet


class RankError(UserError):
    """An error of one rank, reported by all."""


class Ranks:
    """This process's place among the processes of a launch (one, without `accelerate launch`)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.state = None
        if self.world > 1:
            from accelerate import PartialState
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.main = self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state else None

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...]."""
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object
        return gather_object([obj])

    def agree(self, message: str | None):
        """Every rank's messages; each raises the first one (a UserError) if any rank had one."""
        first = next((m for m in self.gather(message) if m), None)
        if first is not None:
            raise RankError(first)

    def on_main(self, fn: Callable):
        """`fn()` on rank 0; its UserError is every rank's error. Returns fn's result on rank 0."""
        result, message = None, None
        if self.main:
            try:
                result = fn()
            except UserError as exc:
                if self.state is None:
                    raise
                message = str(exc)
        self.agree(message)
        return result


@dataclass
class JobResult:
    galaxies: int
    seconds: float


def run_chunks(source: Source, predictor: Predictor, table: ChunkedTable, to_table: Callable[[list, np.ndarray], pa.Table],
               ranks: Ranks, desc: str) -> JobResult:
    """Computes this rank's unfinished chunks and writes their parts."""
    done = table.done()
    mine = [k for k in range(source.chunk_count) if k % ranks.world == ranks.rank and k not in done]
    total = sum(source.sizes[k] for k in mine)
    if ranks.main and done:
        print(f"{table.out}: {len(done)} of {source.chunk_count} chunk(s) already done in {table.parts}; "
              f"continuing", flush=True)
    bar = tqdm(total=total, desc=desc, unit="galaxy", unit_scale=True, dynamic_ncols=True, smoothing=0.1,
               disable=None if ranks.main else True)
    t0, galaxies = time.perf_counter(), 0
    try:
        for k, chunk in source.chunks(mine):
            result = predictor.run(chunk.batches, desc=None, progress=bar.update)
            rejected = chunk.rejected()
            bar.update(len(rejected))  # the bar counts rows: a rejected one is done too
            if len(result.ids) != chunk.expected():
                raise InferenceError(f"chunk {k}: predicted {len(result.ids)} galaxies, but the input holds "
                                     f"{chunk.expected()}; check the shards with `python -m shard_tools verify`")
            table.write(k, to_table(chunk.output_ids(result.ids), result.preds),
                        [(r.id, r.file, r.reason) for r in rejected])
            galaxies += len(result.ids)
    finally:
        bar.close()
    return JobResult(galaxies, time.perf_counter() - t0)


def run_job(source: Source, predictor: Predictor, table: ChunkedTable, to_table, ranks: Ranks, desc: str,
            prepare: Callable[[], None]) -> JobResult:
    """Rank 0 checks and prepares (`prepare()`, then the table); every rank computes its chunks; the ranks
    agree on the outcome. The caller assembles on rank 0."""
    ranks.on_main(lambda: (prepare(), table.prepare()))
    message, result = None, JobResult(0, 0.0)
    try:
        result = run_chunks(source, predictor, table, to_table, ranks, desc)
    except UserError as exc:
        if ranks.state is None:
            raise
        message = f"rank {ranks.rank}: {exc}"
    outcomes = ranks.gather((message, result.galaxies, result.seconds))
    first = next((m for m, _, _ in outcomes if m), None)
    if first is not None:
        raise RankError(first)
    return JobResult(sum(g for _, g, _ in outcomes), max(s for _, _, s in outcomes))


# --- the command predict and embed share ----------------------------------------------------------

REJECTS_SHOWN = 20  # skipped files named on stderr; the rest are in the list


@dataclass
class TableSpec:
    """What one command writes: `to_table(ids, values)` makes a chunk's table; `describe` says what a row
    holds (the last line, the Parquet metadata); `sort_key` sorts the output (Kaggle's GalaxyID)."""
    prog: str
    to_table: Callable[[list, np.ndarray], pa.Table]
    describe: str
    sort_key: str | None = None


def rejects_path(out) -> Path:
    """submission.csv -> submission.rejected.csv; preds.parquet -> preds.parquet.rejected.csv, so that a CSV
    and a Parquet output of one stem keep a list each."""
    out = Path(out)
    return out.with_suffix(".rejected.csv") if out.suffix == ".csv" else out.with_name(out.name + ".rejected.csv")


def check_rejects_are_ours(out: Path, rejects: Path):
    """Two outputs that would still share one list (preds.csv and a suffix-less preds) would replace or
    clean up each other's: refused."""
    for other in (out.with_suffix(s) for s in (".csv", ".parquet", "")):
        if other != out and rejects_path(other) == rejects and other.is_file() and \
                any(written_by(other, c) for c in ("predict", "embed")):
            raise InferenceError(f"--out {out}: {other} beside it would share the rejected-files list {rejects.name}; "
                                 f"choose another --out name (or another folder)")


def write_rejects(path: Path, header: str, rejected: list[tuple[str, str, str]]):
    """The rejected-files list (`file,reason`, or `id,file,reason` for a catalogue), or, with nothing
    rejected, an earlier list of ours removed (the input has been cleaned up since)."""
    if rejected:
        buf = io.StringIO()
        rows = [(f, why) for _, f, why in rejected] if header == "file,reason" else rejected
        csv.writer(buf, lineterminator="\n").writerows([header.split(","), *rows])
        write_atomic(path, buf.getvalue())
    elif path.is_file() and written_by(path, "rejected"):
        path.unlink()


def table_command(args, spec: TableSpec, setup, source: Source, ranks: Ranks) -> int:
    """Checks the outputs, computes the chunks (resuming), assembles OUT and the rejected-files list."""
    loaded, out = setup.loaded, Path(args.out)
    rejects = rejects_path(out)
    settings = {"command": spec.prog, "checkpoint": loaded.digest, "source": source.fingerprint, "tta": args.tta,
                "batch_size": setup.batch_size, "loader": setup.loader, "precision": setup.predictor.precision,
                "compiled": setup.predictor.compiled, "chunk": args.chunk, "rows": spec.describe,
                "format": "parquet" if is_parquet(out) else "csv"}
    table = ChunkedTable(out, spec.prog, settings, spec.sort_key)
    inputs = [*source.inputs, loaded.checkpoint, loaded.run / "config.json"]

    def prepare():
        check_output(out, spec.prog, inputs=inputs, run=loaded.run)
        check_output(rejects, "rejected", "the rejected-files list", inputs=inputs, run=loaded.run)
        check_rejects_are_ours(out, rejects)

    try:
        return _compute_and_assemble(args, spec, setup, source, ranks, table, prepare)
    finally:
        table.release()


def _compute_and_assemble(args, spec: TableSpec, setup, source: Source, ranks: Ranks, table: ChunkedTable, prepare) -> int:
    loaded, out, settings = setup.loaded, table.out, table.settings
    rejects = rejects_path(out)
    result = run_job(source, setup.predictor, table, spec.to_table, ranks, spec.prog, prepare)
    if not ranks.main:
        return 0
    rejected = table.rejected(source.chunk_count)
    if table.rows(source.chunk_count) == 0:
        table.remove_parts()
        raise InferenceError(f"{source.name}: no usable image (all {len(rejected)} rejected, e.g. {rejected[0][1]}: "
                             f"{rejected[0][2]})" if rejected else f"{source.name}: nothing to {spec.prog}")
    meta = {"format": f"gzfast-{spec.prog}-v1", "rows": spec.describe, "run": str(loaded.run),
            "checkpoint": str(loaded.checkpoint), "checkpoint_epoch": loaded.epoch, "tree": loaded.tree.name,
            "tta": args.tta, "settings": settings}
    rows = table.assemble(source.chunk_count, meta)
    write_rejects(rejects, source.rejected_header, rejected)
    table.remove_parts()
    for _, file, why in rejected[:REJECTS_SHOWN]:
        shown = str(Path(args.images) / file) if args.images and not args.catalog else file
        print(f"{spec.prog}: skipped {shown}: {why}", file=sys.stderr)
    if len(rejected) > REJECTS_SHOWN:
        print(f"{spec.prog}: skipped {len(rejected) - REJECTS_SHOWN:,} more, listed in {rejects}", file=sys.stderr)
    if result.galaxies:
        print(speed_line(result.galaxies, result.seconds, args.tta))
    tail = f"; {len(rejected):,} file(s) rejected, listed in {rejects}" if rejected else ""
    print(f"wrote {out}: {rows:,} galaxies x {spec.describe}{tail}")
    return 0
