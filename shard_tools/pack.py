"""`pack`: the Kaggle layout -> tier-split webdataset shards, DALI indexes and a manifest (DESIGN §3).

One pass over the images: each worker reads, validates (full decode) and writes whole shards, each
atomically (temp file + rename), so a killed pack leaves only complete shards; a per-shard record under
`OUT/.pack-state/` lets the re-run skip them. The manifest is written last: its presence with the same
input fingerprint means "up to date".
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import schema
from .catalog import Catalog, Rejection, input_fingerprint, jpeg_problem, read_catalog
from .layout import (
    FORMAT,
    MANIFEST,
    REJECTED,
    SAMPLE_PARTS,
    LayoutError,
    PackedSet,
    atomic_path,
    index_path,
    shard_name,
    write_atomic,
)

STATE = ".pack-state"
VAL_RULE = "blake2b-64('gz2-val:' + GalaxyID) / 2**64 < val_fraction"


@dataclass(frozen=True)
class PackOptions:
    high: float = schema.HIGH
    low: float = schema.LOW
    val_fraction: float = 0.1
    shard_size: int = 500
    tol: float = 1e-4

    def check(self):
        if not 0 <= self.low <= self.high <= 1:
            raise ValueError(f"need 0 <= --low <= --high <= 1, got low={self.low} high={self.high}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")


def is_val(galaxy_id: int, val_fraction: float) -> bool:
    """The deterministic validation rule: a hash of the GalaxyID, independent of row order."""
    digest = hashlib.blake2b(f"gz2-val:{int(galaxy_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


@dataclass(frozen=True)
class ShardJob:
    split: str
    tier: str | None
    path: str                    # relative to OUT
    ids: tuple[int, ...]
    files: tuple[str, ...]
    labels: np.ndarray | None    # len(ids)×37 float32, None for test


def plan_shards(cat: Catalog, opts: PackOptions) -> list[ShardJob]:
    """Which sample goes to which shard: by split and tier, ascending GalaxyID, `shard_size` per shard."""
    train = cat.train
    labels = train[schema.COLUMNS].to_numpy(np.float32)
    val_mask = np.array([is_val(g, opts.val_fraction) for g in train["GalaxyID"]], dtype=bool)
    tiers = schema.tier_of(schema.confidence(labels), opts.high, opts.low)
    groups = [("train", t, (~val_mask) & (tiers == t)) for t in schema.TIERS]
    groups.append(("val", None, val_mask))
    jobs = []
    for split, tier, mask in groups:
        idx = np.flatnonzero(mask)
        for n, start in enumerate(range(0, len(idx), opts.shard_size)):
            part = idx[start:start + opts.shard_size]
            jobs.append(ShardJob(split, tier, shard_name(split, tier, n),
                                 tuple(int(g) for g in train["GalaxyID"].iloc[part]),
                                 tuple(train["file"].iloc[part]), labels[part]))
    test = cat.test
    for n, start in enumerate(range(0, len(test), opts.shard_size)):
        part = test.iloc[start:start + opts.shard_size]
        jobs.append(ShardJob("test", None, shard_name("test", None, n), tuple(int(g) for g in part["GalaxyID"]),
                             tuple(part["file"]), None))
    return jobs


def write_shard(job: ShardJob, out: Path) -> dict:
    """Reads, validates and writes one shard (+ its DALI index) atomically. Returns its record."""
    import webdataset as wds
    from wds2idx import IndexCreator  # ships with nvidia-dali; plain Python, no DALI import

    tar_path = out / job.path
    rejected, kept = [], []
    buf = io.BytesIO()
    with wds.TarWriter(buf, user="gz2", group="gz2", mode=0o444, mtime=0, encoder=False) as sink:
        for i, (gid, file) in enumerate(zip(job.ids, job.files)):
            try:
                data = Path(file).read_bytes()
            except OSError as exc:
                rejected.append(asdict(Rejection(str(gid), file, job.split, f"cannot read image: {exc}")))
                continue
            problem = jpeg_problem(data)
            if problem:
                rejected.append(asdict(Rejection(str(gid), file, job.split, problem)))
                continue
            sample = {"__key__": str(gid), "jpg": data, "i64": np.int64(gid).astype("<i8").tobytes()}
            if job.labels is not None:
                sample["f32"] = job.labels[i].astype("<f4").tobytes()
            sink.write(sample)
            kept.append(gid)
    record = {"split": job.split, "tier": job.tier, "path": job.path, "index": index_path(job.path),
              "samples": len(kept), "rejected": rejected}
    if not kept:  # every sample rejected: no shard (DALI cannot read an empty tar)
        return record
    data = buf.getvalue()
    # the index first, from the tar's temp file: a tar on disk always has its index beside it
    with atomic_path(tar_path) as tmp_tar:
        tmp_tar.write_bytes(data)
        with atomic_path(out / record["index"]) as tmp_idx, \
                IndexCreator(str(tmp_tar), str(tmp_idx), verbose=False) as creator:
            creator.create_index()
    record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), first_id=kept[0], last_id=kept[-1])
    return record


def _state_file(out: Path, fingerprint: str, job: ShardJob) -> Path:
    return out / STATE / fingerprint[:16] / (job.path.replace("/", "__") + ".json")


def _run_job(args):
    job, out, fingerprint = args
    record = write_shard(job, out)
    write_atomic(_state_file(out, fingerprint, job), json.dumps(record))
    return record


def _done_record(out: Path, fingerprint: str, job: ShardJob) -> dict | None:
    """The record of a shard a previous (interrupted) run of the same input completed, if intact."""
    state = _state_file(out, fingerprint, job)
    if not state.exists():
        return None
    record = json.loads(state.read_text())
    if record["samples"] == 0:
        return record
    tar, idx = out / record["path"], out / record["index"]
    if tar.exists() and idx.exists() and tar.stat().st_size == record["bytes"]:
        return record
    return None


def _up_to_date(out: Path, fingerprint: str) -> bool:
    try:
        packed = PackedSet.open(out)
    except LayoutError:
        return False
    if packed.manifest.get("input_fingerprint") != fingerprint:
        return False
    return all(os.path.exists(s.path) and os.path.getsize(s.path) == s.bytes and os.path.exists(s.index)
               for s in packed.shards)


def pack(data_dir: str | Path, out: str | Path, opts: PackOptions = PackOptions(), workers: int | None = None,
         progress: bool = True) -> dict:
    """Packs `data_dir` (Kaggle layout) into `out`. Returns the manifest."""
    opts.check()
    data_dir, out = Path(data_dir), Path(out)
    t0 = time.perf_counter()
    fingerprint = input_fingerprint(data_dir, {**asdict(opts), "format": FORMAT})
    if _up_to_date(out, fingerprint):
        print(f"pack: {out} is up to date with {data_dir} (same input fingerprint); nothing to do")
        return PackedSet.open(out).manifest
    cat = read_catalog(data_dir, opts.tol)
    jobs = plan_shards(cat, opts)
    out.mkdir(parents=True, exist_ok=True)
    # A manifest must never describe shards that are being rewritten: drop it until the set is whole.
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in (out / STATE).glob("*"):
        if stale.name != fingerprint[:16]:
            shutil.rmtree(stale)
    (out / STATE / fingerprint[:16]).mkdir(parents=True, exist_ok=True)

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
        else:
            pool = mp.get_context("fork").Pool(workers)
            results = pool.imap_unordered(_run_job, [(j, out, fingerprint) for j in todo])
        for rec in results:
            records[rec["path"]] = rec
            bar.update(rec["samples"] + len(rec["rejected"]))
        if workers > 1:
            pool.close()
            pool.join()

    ordered = [records[j.path] for j in jobs]
    rejected = [asdict(r) for r in cat.rejected] + [r for rec in ordered for r in rec["rejected"]]
    shards = [{k: v for k, v in rec.items() if k != "rejected"} for rec in ordered if rec["samples"]]
    # Leftovers of an earlier, different pack into the same folder would be read as data: remove them.
    keep = {s["path"] for s in shards} | {s["index"] for s in shards}
    for split in ("train", "val", "test"):
        for f in (out / split).rglob("*"):
            if f.is_file() and f.relative_to(out).as_posix() not in keep:
                f.unlink()

    counts = {"input": cat.n_input, "accepted": sum(s["samples"] for s in shards), "rejected": len(rejected)}
    for s in shards:
        key = s["split"] if s["tier"] is None else f"train_{s['tier']}"
        counts[key] = counts.get(key, 0) + s["samples"]
    assert counts["accepted"] + counts["rejected"] == counts["input"], counts
    manifest = {
        "format": FORMAT,
        "confidence": schema.CONFIDENCE_DEFINITION,
        "tiers": {"high": f"c > {opts.high}", "medium": f"{opts.low} <= c <= {opts.high}", "low": f"c < {opts.low}"},
        "thresholds": {"high": opts.high, "low": opts.low},
        "validation_rule": VAL_RULE,
        "options": asdict(opts),
        "input": str(data_dir.resolve()),
        "input_fingerprint": fingerprint,
        "counts": counts,
        "sample": SAMPLE_PARTS,
        "columns": schema.COLUMNS,
        "shards": shards,
    }
    _write_rejected(out / REJECTED, rejected)
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(out / STATE, ignore_errors=True)
    rate = n_images / max(time.perf_counter() - t0, 1e-9)
    tiers = ", ".join(f"{t} {counts.get('train_' + t, 0)}" for t in schema.TIERS)
    print(f"pack: {counts['accepted']} accepted (train {tiers}; val {counts.get('val', 0)}; test "
          f"{counts.get('test', 0)}), {counts['rejected']} rejected"
          + (f" (reasons in {out / REJECTED})" if rejected else "")
          + f"; {len(shards)} shards in {out}; {rate:.0f} img/s with {workers} workers")
    return manifest


def _write_rejected(path: Path, rows: list[dict]):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["galaxy_id", "file", "split", "reason"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def read_rejected(out: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(out) / REJECTED, dtype=str, keep_default_na=False)
