"""`pack`: the Kaggle layout -> tier-split webdataset shards, DALI indexes and a manifest (DESIGN §3).

One pass over the images: each worker reads, validates (full decode) and writes whole shards, each
atomically (temp file + rename), so a killed pack leaves only complete shards; a per-shard record under
`OUT/.pack-state/` lets the re-run skip them. The manifest is written last: its presence with the same
input fingerprint (CSV bytes, every image's name, size and blake2b, the options) means "up to date".

`OUT` is pack's own folder: pack writes into an empty or new folder or into a packed set (a gzfast
manifest, `.pack.lock` or `.pack-state/`), refuses any other non-empty folder, and deletes only names it
writes itself (`layout.is_pack_name`). One pack at a time holds `OUT/.pack.lock`. A failed write (disk
full, read-only, permissions) stops with one line naming the path; the manifest stays absent until a pack
completes, finished shards are kept for the re-run, and no temp file is left.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
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
from tqdm import tqdm

from . import schema
from .catalog import (
    Catalog,
    InputFiles,
    Rejection,
    file_digest,
    hash_images,
    input_fingerprint,
    jpeg_problem,
    read_catalog,
    readable,
    scan_input,
)
from .layout import (
    FORMAT,
    LOCK,
    MANIFEST,
    REJECTED,
    SAMPLE_PARTS,
    STATE,
    LayoutError,
    PackedSet,
    atomic_path,
    index_path,
    is_pack_name,
    is_temp_name,
    shard_name,
    write_atomic,
)

VAL_RULE = "blake2b-64('gz2-val:' + GalaxyID) / 2**64 < val_fraction"


class PackError(ValueError):
    """An anticipated failure of a pack (a refused --out, a failed write): one line for the user."""


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
    digests: tuple[str, ...]     # of each file when the input was fingerprinted
    labels: np.ndarray | None    # len(ids)×37 float32, None for test


def plan_shards(cat: Catalog, opts: PackOptions, digests: dict[str, str]) -> list[ShardJob]:
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
            files = tuple(train["file"].iloc[part])
            jobs.append(ShardJob(split, tier, shard_name(split, tier, n),
                                 tuple(int(g) for g in train["GalaxyID"].iloc[part]),
                                 files, tuple(digests[f] for f in files), labels[part]))
    test = cat.test
    for n, start in enumerate(range(0, len(test), opts.shard_size)):
        part = test.iloc[start:start + opts.shard_size]
        files = tuple(part["file"])
        jobs.append(ShardJob("test", None, shard_name("test", None, n), tuple(int(g) for g in part["GalaxyID"]),
                             files, tuple(digests[f] for f in files), None))
    return jobs


def write_shard(job: ShardJob, out: Path) -> dict:
    """Reads, validates and writes one shard (+ its DALI index) atomically. Returns its record."""
    import webdataset as wds
    from wds2idx import IndexCreator  # ships with nvidia-dali; plain Python, no DALI import

    tar_path = out / job.path
    rejected, kept = [], []
    buf = io.BytesIO()
    with wds.TarWriter(buf, user="gz2", group="gz2", mode=0o444, mtime=0, encoder=False) as sink:
        for i, (gid, file, digest) in enumerate(zip(job.ids, job.files, job.digests)):
            try:
                data = Path(file).read_bytes()
            except OSError as exc:
                rejected.append(asdict(Rejection(str(gid), readable(file), job.split,
                                                 f"cannot read image: {exc.strerror}")))
                continue
            if file_digest(data) != digest:  # else the manifest's fingerprint would not describe this shard
                raise PackError(f"{readable(file)}: changed while pack was running; re-run pack when the input is still")
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


def _up_to_date(out: Path, fingerprint: str) -> bool:
    try:
        packed = PackedSet.open(out)
    except LayoutError:
        return False
    if packed.manifest.get("input_fingerprint") != fingerprint:
        return False
    return all(os.path.exists(s.path) and os.path.getsize(s.path) == s.bytes and os.path.exists(s.index)
               for s in packed.shards)


def check_out(out: Path):
    """Refuses an --out that pack must not write into: a file, or a non-empty folder that is not a packed set
    (its files are somebody else's, and pack would delete or mix with them)."""
    if out.exists() and not out.is_dir():
        raise PackError(f"{out}: --out is a file, not a folder; pick a folder for the packed set")
    if not out.exists():
        return
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise PackError(f"{out}: cannot read the --out folder ({exc.strerror}); fix its permissions or pick another --out") from None
    if not names or LOCK in names or STATE in names:
        return
    try:
        PackedSet.open(out)
        return
    except LayoutError:
        pass
    shown = ", ".join(readable(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    raise PackError(f"{out}: not empty ({shown}) and not a packed set (no gzfast {MANIFEST}); pack only writes into an "
                    f"empty folder or a set it packed: pick another --out")


@contextlib.contextmanager
def pack_lock(out: Path):
    """Holds OUT/.pack.lock (flock) for the whole pack: a second pack into OUT stops at once, naming the first."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PackError(f"another pack is writing {out} (pid {pid}); wait for it or pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (the file stays: it marks the folder as pack's)


_ADVICE = {
    errno.ENOSPC: "free space there (or pick another --out) and re-run: finished shards are kept",
    errno.EDQUOT: "free quota there (or pick another --out) and re-run: finished shards are kept",
    errno.EROFS: "the file system is read-only; pick another --out",
    errno.EACCES: "no permission to write there; fix the folder's permissions or pick another --out",
    errno.EPERM: "no permission to write there; fix the folder's permissions or pick another --out",
}


def _write_failure(exc: OSError, out: Path) -> PackError:
    where = readable(str(exc.filename or out))
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    advice = _ADVICE.get(exc.errno, "fix the cause and re-run pack: finished shards are kept")
    return PackError(f"cannot write {where}: {exc.strerror or exc} ({code}); {advice}; {out} has no manifest until "
                     f"a pack completes")


def _own_files(out: Path):
    """Every file under `out` (posix path relative to it, path) whose name pack writes."""
    for folder, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(out).as_posix()
            if is_pack_name(rel):
                yield rel, path


def _remove_temp_files(out: Path):
    """Temp names of pack's own files (a crashed or failed write, this run's or a killed one's); the lock
    keeps any other pack out, so none of them is being written."""
    for rel, path in _own_files(out):
        if is_temp_name(rel.rpartition("/")[2]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def pack(data_dir: str | Path, out: str | Path, opts: PackOptions = PackOptions(), workers: int | None = None,
         progress: bool = True) -> dict:
    """Packs `data_dir` (Kaggle layout) into `out`. Returns the manifest. Raises CatalogError or
    PackError (bad options, a refused --out, a failed write) with one line for anticipated failures."""
    opts.check()
    data_dir, out = Path(data_dir), Path(out)
    t0 = time.perf_counter()
    check_out(out)
    inp = hash_images(scan_input(data_dir))
    fingerprint = input_fingerprint(inp, {**asdict(opts), "format": FORMAT})
    if _up_to_date(out, fingerprint):
        print(f"pack: {out} is up to date with {data_dir} (same input fingerprint); nothing to do")
        return PackedSet.open(out).manifest
    cat = read_catalog(inp, opts.tol)
    jobs = plan_shards(cat, opts, inp.digests)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with pack_lock(out):
            return _pack_locked(data_dir, out, opts, workers, progress, t0, inp, fingerprint, cat, jobs)
    except OSError as exc:
        raise _write_failure(exc, out) from None


def _pack_locked(data_dir: Path, out: Path, opts: PackOptions, workers, progress, t0, inp: InputFiles,
                 fingerprint: str, cat: Catalog, jobs: list[ShardJob]) -> dict:
    # A manifest must never describe shards that are being rewritten: drop it until the set is whole.
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in (out / STATE).glob("*"):
        if stale.name != fingerprint[:16]:
            shutil.rmtree(stale)
    (out / STATE / fingerprint[:16]).mkdir(parents=True, exist_ok=True)
    try:
        records, workers, n_images = _write_shards(out, fingerprint, jobs, workers, progress)
    finally:
        _remove_temp_files(out)

    ordered = [records[j.path] for j in jobs]
    rejected = [asdict(r) for r in cat.rejected] + [r for rec in ordered for r in rec["rejected"]]
    shards = [{k: v for k, v in rec.items() if k != "rejected"} for rec in ordered if rec["samples"]]
    # Shards of an earlier, different pack into the same folder would be read as data: remove those (and
    # only names pack writes; a user's file inside the set is not pack's to delete).
    keep = {s["path"] for s in shards} | {s["index"] for s in shards} | {MANIFEST, REJECTED, LOCK}
    for rel, path in list(_own_files(out)):
        if rel not in keep and not rel.startswith(STATE + "/"):
            path.unlink()

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


def _write_shards(out: Path, fingerprint: str, jobs: list[ShardJob], workers, progress):
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
            for rec in map(_run_job, ((j, out, fingerprint) for j in todo)):
                records[rec["path"]] = rec
                bar.update(rec["samples"] + len(rec["rejected"]))
        else:
            # On a worker's error the pool is terminated (its half-written temp files are removed after).
            with mp.get_context("fork").Pool(workers) as pool:
                for rec in pool.imap_unordered(_run_job, [(j, out, fingerprint) for j in todo]):
                    records[rec["path"]] = rec
                    bar.update(rec["samples"] + len(rec["rejected"]))
    return records, workers, n_images


def _write_rejected(path: Path, rows: list[dict]):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["galaxy_id", "file", "split", "reason"])
    writer.writeheader()
    writer.writerows({k: readable(str(v)) for k, v in row.items()} for row in rows)
    write_atomic(path, text.getvalue())
