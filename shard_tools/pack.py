"""`pack`: a catalogue -> tier-split webdataset shards, DALI indexes and a manifest (docs/design.md §4).

Two inputs: the Kaggle layout (`pack(data_dir, ...)`, `--data`: the gz2-kaggle tree, 424×424 JPEGs kept
byte for byte) and any catalogue (`pack_catalog(spec, ...)`, `--catalog FILE --images DIR --tree T`: CSV or
Parquet, vote counts or fractions, images of any size brought to one square side).

One pass over the images: each worker reads, validates (full decode) and writes whole shards, each
atomically (temp file + rename), so a killed pack leaves only complete shards; a per-shard record under
`OUT/.pack-state/` lets the re-run skip them. The manifest is written last: its presence with the same
input fingerprint (catalogue bytes, every image's name, size and blake2b, the options) means "up to date".
A failed write (disk full, read-only, permissions) stops with one line naming the path; the manifest stays
absent until a pack completes, finished shards are kept for the re-run, and no temp file is left. SIGTERM
stops a pack like Ctrl-C: workers ended, the lock released, finished shards kept.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import schema
from .catalog import InputFiles, hash_images, input_fingerprint, read_catalog, readable, scan_input
from .ids import ID_TABLE, id_table_text, is_val
from .images import JPEG_QUALITY
from .layout import (
    FORMAT,
    IMAGE_SIDE,
    LOCK,
    MANIFEST,
    REJECTED,
    STATE,
    LayoutError,
    PackedSet,
    sample_parts,
    write_atomic,
)
from .outdir import PackError, check_out, check_outside, own_files, pack_lock, remove_temp_files, write_failure
from .shards import ShardJob, TrainRows, plan_shards, write_shard
from .trees import GZ2_KAGGLE, Tree
from .user_catalog import CatalogSpec, catalog_fingerprint, hash_row_images, read_user_catalog

__all__ = ["PackError", "PackOptions", "PackStopped", "is_val", "pack", "pack_catalog"]  # is_val: from ids
VAL_RULE = "blake2b-64('gz2-val:' + GalaxyID) / 2**64 < val_fraction"


class PackStopped(PackError):
    """SIGTERM reached the pack."""
    exit_code = 128 + signal.SIGTERM


@dataclass(frozen=True)
class PackOptions:
    high: float = schema.HIGH
    low: float = schema.LOW
    val_fraction: float = 0.1
    shard_size: int = 500
    tol: float = 1e-4

    def check(self):
        if not 0 <= self.low <= self.high <= 1:
            raise PackError(f"need 0 <= --low <= --high <= 1, got low={self.low} high={self.high}")
        if not 0 <= self.val_fraction < 1:
            raise PackError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_size < 1:
            raise PackError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 0 <= self.tol < 1:
            raise PackError(f"--tol must be in [0, 1), got {self.tol}")


@dataclass
class PackSource:
    """What a pack shards, whichever input it came from."""
    train: TrainRows
    test: tuple[list[int], list[str], list[str]]   # ids, names, files
    digests: dict[str, str]
    rejected: list                                  # Rejection
    n_input: int
    tree: Tree
    labels: str                                     # counts or fractions
    image: tuple[int, str] | None                   # (side, fit); None: Kaggle JPEGs kept as they are
    ids: dict                                       # the manifest's "ids"
    id_names: dict[int, str] | None                 # string ids: sample id -> catalogue id
    input: dict                                     # what the manifest says was read
    validation_rule: str


# --- the two inputs ----------------------------------------------------------------------------------

def _kaggle_source(inp: InputFiles, data_dir: Path, opts: PackOptions) -> PackSource:
    cat = read_catalog(inp, opts.tol)
    t = cat.train
    labels = t[schema.COLUMNS].to_numpy(np.float32)
    ids = t["GalaxyID"].to_numpy(np.int64)
    train = TrainRows(ids, [str(g) for g in ids], list(t["file"]), labels, None, GZ2_KAGGLE.confidence(labels),
                      np.array([is_val(int(g), opts.val_fraction) for g in ids], dtype=bool))
    test = ([int(g) for g in cat.test["GalaxyID"]], [str(g) for g in cat.test["GalaxyID"]], list(cat.test["file"]))
    return PackSource(train, test, inp.digests, cat.rejected, cat.n_input, GZ2_KAGGLE, "fractions", None,
                      {"kind": "integer", "column": GZ2_KAGGLE.id_column, "table": None}, None,
                      {"input": str(data_dir.resolve())}, VAL_RULE)


def _catalog_source(spec: CatalogSpec, rows, digests: dict[str, str], opts: PackOptions) -> PackSource:
    tree = spec.tree
    train = TrainRows(rows.ids, rows.names, rows.files, rows.labels, rows.counts, tree.confidence(rows.labels),
                      np.array([is_val(k, opts.val_fraction) for k in rows.keys], dtype=bool))
    string = rows.id_kind == "string"
    names = dict(zip(rows.ids.tolist(), rows.names)) if string else None
    return PackSource(
        train, ([], [], []), digests, rows.rejected, rows.n_input, tree, rows.source, (spec.side, spec.fit),
        {"kind": rows.id_kind, "column": rows.id_column, "table": ID_TABLE if string else None}, names,
        {"input": str(spec.catalog.resolve()), "images": str(spec.images.resolve()),
         "file_column": spec.file_column or tree.file_column},
        f"blake2b-64('gz2-val:' + {rows.id_column}) / 2**64 < val_fraction"
        + (" (the id as written)" if string else " (the id as an integer)"))


def pack(data_dir: str | Path, out: str | Path, opts: PackOptions = PackOptions(), workers: int | None = None,
         progress: bool = True) -> dict:
    """Packs `data_dir` (Kaggle layout) into `out`. Returns the manifest. Raises CatalogError or
    PackError (bad options, a refused --out, a failed write) with one line for anticipated failures."""
    opts.check()
    data_dir, out = Path(data_dir), Path(out)
    t0 = time.perf_counter()
    check_out(out)
    check_outside(out, data_dir, "--data")
    inp = hash_images(scan_input(data_dir))
    fingerprint = input_fingerprint(inp, {**asdict(opts), "format": FORMAT})
    return _pack(out, fingerprint, str(data_dir), lambda: _kaggle_source(inp, data_dir, opts), opts, workers,
                 progress, t0)


def pack_catalog(spec: CatalogSpec, out: str | Path, opts: PackOptions = PackOptions(), workers: int | None = None,
                 progress: bool = True) -> dict:
    """Packs the catalogue `spec` describes into `out`. Returns the manifest; CatalogError or PackError (one
    line) for anticipated failures."""
    opts.check()
    spec.check()
    out = Path(out)
    t0 = time.perf_counter()
    check_out(out)
    check_outside(out, spec.images, "--images")
    rows = read_user_catalog(spec, opts.tol)
    digests = hash_row_images(rows)
    options = {**asdict(opts), "format": FORMAT, "tree": spec.tree.to_dict(), "id_column": rows.id_column,
               "file_column": spec.file_column or spec.tree.file_column, "labels": rows.source, "side": spec.side,
               "fit": spec.fit, "images": str(spec.images.resolve()), "jpeg_quality": JPEG_QUALITY}
    fingerprint = catalog_fingerprint(rows, options, digests)
    return _pack(out, fingerprint, str(spec.catalog), lambda: _catalog_source(spec, rows, digests, opts), opts,
                 workers, progress, t0)


# --- the pack itself ---------------------------------------------------------------------------------

def _up_to_date(out: Path, fingerprint: str) -> bool:
    try:
        packed = PackedSet.open(out)
    except LayoutError:
        return False
    if packed.manifest.get("input_fingerprint") != fingerprint:
        return False
    return all(os.path.exists(s.path) and os.path.getsize(s.path) == s.bytes and os.path.exists(s.index)
               for s in packed.shards)


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM raises PackStopped in the main thread, so the pool is ended and the lock released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise PackStopped("stopped by SIGTERM; run the same command again to finish (finished shards are kept)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _pack(out: Path, fingerprint: str, what: str, build, opts: PackOptions, workers, progress, t0) -> dict:
    if _up_to_date(out, fingerprint):
        print(f"pack: {out} is up to date with {what} (same input fingerprint); nothing to do")
        return PackedSet.open(out).manifest
    source = build()
    jobs = plan_shards(source.train, source.test, source.digests, opts.high, opts.low, opts.shard_size, source.image)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with pack_lock(out) as lock_fd, _sigterm_stops():
            return _pack_locked(out, opts, workers, progress, t0, fingerprint, source, jobs, lock_fd)
    except OSError as exc:
        raise write_failure(exc, out) from None


def _pack_locked(out: Path, opts: PackOptions, workers, progress, t0, fingerprint: str, source: PackSource,
                 jobs: list[ShardJob], lock_fd: int) -> dict:
    # A manifest must never describe shards that are being rewritten: drop it until the set is whole.
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in (out / STATE).glob("*"):
        if stale.name != fingerprint[:16]:
            shutil.rmtree(stale)
    (out / STATE / fingerprint[:16]).mkdir(parents=True, exist_ok=True)
    try:
        records, workers, n_images = _write_shards(out, fingerprint, jobs, workers, progress, lock_fd)
    finally:
        remove_temp_files(out)

    ordered = [records[j.path] for j in jobs]
    rejected = [asdict(r) for r in source.rejected] + [r for rec in ordered for r in rec["rejected"]]
    shards = [{k: v for k, v in rec.items() if k != "rejected"} for rec in ordered if rec["samples"]]
    # Shards of an earlier, different pack into the same folder would be read as data: remove those (and
    # only names pack writes; a user's file inside the set is not pack's to delete).
    keep = {s["path"] for s in shards} | {s["index"] for s in shards} | {MANIFEST, REJECTED, LOCK}
    if source.id_names is not None:
        keep.add(ID_TABLE)
    for rel, path in list(own_files(out)):
        if rel not in keep and not rel.startswith(STATE + "/"):
            path.unlink()

    counts = {"input": source.n_input, "accepted": sum(s["samples"] for s in shards), "rejected": len(rejected)}
    for s in shards:
        key = s["split"] if s["tier"] is None else f"train_{s['tier']}"
        counts[key] = counts.get(key, 0) + s["samples"]
    assert counts["accepted"] + counts["rejected"] == counts["input"], counts
    manifest = _manifest(opts, fingerprint, source, counts, shards)
    _write_rejected(out / REJECTED, rejected)
    if source.id_names is not None:
        write_atomic(out / ID_TABLE, id_table_text(source.id_names, source.ids["column"]))
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(out / STATE, ignore_errors=True)
    _summary(out, counts, rejected, shards, source, n_images / max(time.perf_counter() - t0, 1e-9), workers)
    return manifest


def _manifest(opts: PackOptions, fingerprint: str, source: PackSource, counts: dict, shards: list[dict]) -> dict:
    tree, has_counts = source.tree, source.train.counts is not None
    side, fit = source.image or (IMAGE_SIDE, None)  # the Kaggle layout's JPEGs are checked to be 424
    return {
        "format": FORMAT,
        "confidence": tree.confidence_definition,
        "tiers": {"high": f"c > {opts.high}", "medium": f"{opts.low} <= c <= {opts.high}", "low": f"c < {opts.low}"},
        "thresholds": {"high": opts.high, "low": opts.low},
        "validation_rule": source.validation_rule,
        "options": asdict(opts),
        **source.input,
        "input_fingerprint": fingerprint,
        "counts": counts,
        "sample": sample_parts(tree, has_counts, kept_originals=source.image is None),
        "columns": list(tree.columns),
        "tree": tree.to_dict(),
        "labels": source.labels,
        "has_counts": has_counts,
        "image": {"side": side, "fit": fit, "jpeg_quality": None if source.image is None else JPEG_QUALITY},
        "ids": source.ids,
        "shards": shards,
    }


def _summary(out: Path, counts: dict, rejected: list, shards: list, source: PackSource, rate: float, workers: int):
    tiers = ", ".join(f"{t} {counts.get('train_' + t, 0)}" for t in schema.TIERS)
    extra = ""
    if source.image is not None:
        extra = (f"; {source.tree.name} tree, labels from {source.labels}, images {source.image[0]} px "
                 f"({source.image[1]}), {source.ids['kind']} ids"
                 + (f" (sample id -> {source.ids['column']} in {out / ID_TABLE})" if source.id_names is not None else ""))
    print(f"pack: {counts['accepted']} accepted (train {tiers}; val {counts.get('val', 0)}; test "
          f"{counts.get('test', 0)}), {counts['rejected']} rejected"
          + (f" (reasons in {out / REJECTED})" if rejected else "")
          + f"; {len(shards)} shards in {out}{extra}; {rate:.0f} img/s with {workers} workers")


# --- the shards, in worker processes -----------------------------------------------------------------

def _state_file(out: Path, fingerprint: str, job: ShardJob) -> Path:
    return out / STATE / fingerprint[:16] / (job.path.replace("/", "__") + ".json")


def _run_job(args):
    job, out, fingerprint = args
    record = write_shard(job, out)
    if "changed" not in record:
        write_atomic(_state_file(out, fingerprint, job), json.dumps(record))
    return record


def _done_record(out: Path, fingerprint: str, job: ShardJob) -> dict | None:
    """The record of a shard a previous (interrupted) run of the same input completed, if intact."""
    state = _state_file(out, fingerprint, job)
    try:
        record = json.loads(state.read_text())
        if record["samples"] == 0:
            return record
        tar, idx = out / record["path"], out / record["index"]
        if tar.exists() and idx.exists() and tar.stat().st_size == record["bytes"]:
            return record
    except (OSError, ValueError, KeyError, TypeError):  # absent or garbled: write the shard again
        pass
    return None


def _worker_init(lock_fd: int):
    """A worker never holds the pack's lock, dies with its parent, and leaves SIGTERM/Ctrl-C to the parent
    (which ends the pool)."""
    os.close(lock_fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _check_changed(record: dict):
    if "changed" in record:
        raise PackError(f"{readable(record['changed'])}: changed while pack was running; re-run pack when the input "
                        f"is still")


def _write_shards(out: Path, fingerprint: str, jobs: list[ShardJob], workers, progress, lock_fd: int):
    """Writes the shards not already done by an interrupted run of the same input; their records by path."""
    records = {}
    todo = []
    for job in jobs:
        rec = _done_record(out, fingerprint, job)
        if rec is None:
            todo.append(job)
        else:
            records[job.path] = rec
    if records:
        print(f"pack: resuming, {len(records)} of {len(jobs)} shards already written")
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    n_images = sum(len(j.ids) for j in todo)
    with tqdm(total=n_images, desc="pack", unit="img", disable=not progress) as bar:
        if workers == 1:
            results = map(_run_job, ((j, out, fingerprint) for j in todo))
            for rec in results:
                _check_changed(rec)
                records[rec["path"]] = rec
                bar.update(rec["samples"] + len(rec["rejected"]))
        else:
            # On a worker's error (or SIGTERM) the pool is terminated; its half-written temp files are removed after.
            with mp.get_context("fork").Pool(workers, _worker_init, (lock_fd,)) as pool:
                for rec in pool.imap_unordered(_run_job, [(j, out, fingerprint) for j in todo]):
                    _check_changed(rec)
                    records[rec["path"]] = rec
                    bar.update(rec["samples"] + len(rec["rejected"]))
    return records, workers, n_images


def _write_rejected(path: Path, rows: list[dict]):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["galaxy_id", "file", "split", "reason"])
    writer.writeheader()
    writer.writerows({k: readable(str(v)) for k, v in row.items()} for row in rows)
    write_atomic(path, text.getvalue())

