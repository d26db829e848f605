"""Which sample goes to which shard, and writing one shard (tar + DALI index) atomically.

The tar is written with the standard library's `tarfile`, as webdataset's `TarWriter` wrote it (a PAX
stream in 10,240-byte records, members `<key>.<ext>` in sorted extension order, mtime 0, mode 0444, owner
and group `gz2`), so a shard is byte-identical to the ones packed before and packing needs no torch
(webdataset imports it). DALI's `wds2idx` (plain Python, shipped with nvidia-dali) writes the index.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .catalog import Rejection, jpeg_problem, readable
from .images import square_jpeg
from .inputs import NotRegularFile, file_digest, read_regular
from .layout import atomic_path, index_path, shard_name
from .outdir import PackError
from .schema import TIERS, tier_of

TAR_OWNER = "gz2"
TAR_MODE = 0o444


@dataclass(frozen=True)
class TrainRows:
    """The labelled samples of a pack, ascending sample id."""
    ids: np.ndarray              # int64 sample ids
    names: list[str]             # the catalogue id as written (for rejections)
    files: list[str]
    labels: np.ndarray           # N×n float32 cumulative fractions
    counts: np.ndarray | None    # N×n float32 vote counts, or None
    confidence: np.ndarray       # the tree's confidence of each row's labels
    val: np.ndarray              # bool: in the validation split


@dataclass(frozen=True)
class ShardJob:
    split: str
    tier: str | None
    path: str                    # relative to OUT
    ids: tuple[int, ...]
    names: tuple[str, ...]
    files: tuple[str, ...]
    digests: tuple[str, ...]     # of each file when the input was fingerprinted
    labels: np.ndarray | None    # len(ids)×n float32, None for test
    counts: np.ndarray | None    # len(ids)×n float32, None without counts
    image: tuple[int, str] | None  # (side, fit) to bring images to; None: Kaggle JPEGs kept as they are


def _chunks(n: int, size: int):
    return [(k, range(start, min(start + size, n))) for k, start in enumerate(range(0, n, size))]


def plan_shards(train: TrainRows, test: tuple[list[int], list[str], list[str]], digests: dict[str, str],
                high: float, low: float, shard_size: int, image: tuple[int, str] | None) -> list[ShardJob]:
    """Shards by split and tier (confidence of the labels), ascending sample id, `shard_size` per shard."""
    tiers = tier_of(train.confidence, high, low)
    groups = [("train", t, np.flatnonzero((~train.val) & (tiers == t))) for t in TIERS]
    groups.append(("val", None, np.flatnonzero(train.val)))
    jobs = []
    for split, tier, idx in groups:
        for n, part in _chunks(len(idx), shard_size):
            rows = idx[list(part)]
            files = tuple(train.files[i] for i in rows)
            jobs.append(ShardJob(split, tier, shard_name(split, tier, n), tuple(int(g) for g in train.ids[rows]),
                                 tuple(train.names[i] for i in rows), files, tuple(digests[f] for f in files),
                                 train.labels[rows], None if train.counts is None else train.counts[rows], image))
    test_ids, test_names, test_files = test
    for n, part in _chunks(len(test_ids), shard_size):
        files = tuple(test_files[i] for i in part)
        jobs.append(ShardJob("test", None, shard_name("test", None, n), tuple(test_ids[i] for i in part),
                             tuple(test_names[i] for i in part), files, tuple(digests[f] for f in files), None, None,
                             image))
    return jobs


def tar_bytes(samples) -> bytes:
    """A tar of `samples` ((key, {ext: bytes}) in order) exactly as webdataset's TarWriter writes it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for key, parts in samples:
            for ext in sorted(parts):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(parts[ext]), 0, TAR_MODE
                info.uname = info.gname = TAR_OWNER
                tar.addfile(info, io.BytesIO(parts[ext]))
    return buf.getvalue()


def _sample_jpeg(job: ShardJob, data: bytes) -> tuple[bytes | None, str | None]:
    if job.image is None:
        problem = jpeg_problem(data)
        return (None, problem) if problem else (data, None)
    return square_jpeg(data, *job.image)


def _samples(job: ShardJob, rejected: list[dict], kept: list[int]):
    """Yields (key, parts) of the usable samples of `job`; rejects the rest. A file whose bytes differ from
    its fingerprint ends the shard with `changed` (the manifest would not describe what was packed)."""
    for i, (sid, name, file, digest) in enumerate(zip(job.ids, job.names, job.files, job.digests)):
        try:
            data = read_regular(file)
        except (NotRegularFile, OSError) as exc:
            rejected.append(asdict(Rejection(name, readable(file), job.split, f"cannot read image: {exc.strerror}")))
            continue
        if file_digest(data) != digest:
            raise _Changed(file)
        jpg, problem = _sample_jpeg(job, data)
        if problem:
            rejected.append(asdict(Rejection(name, readable(file), job.split, problem)))
            continue
        parts = {"jpg": jpg, "i64": np.int64(sid).astype("<i8").tobytes()}
        if job.labels is not None:
            parts["f32"] = job.labels[i].astype("<f4").tobytes()
            if job.counts is not None:
                parts["cnt"] = job.counts[i].astype("<f4").tobytes()
        kept.append(sid)
        yield str(sid), parts


class _Changed(Exception):
    pass


def write_shard(job: ShardJob, out: Path) -> dict:
    """Reads, validates and writes one shard (+ its DALI index) atomically. Returns its record (with
    `changed`: a file, when an input file changed since it was fingerprinted; nothing is written then)."""
    try:
        from wds2idx import IndexCreator  # ships with nvidia-dali; plain Python, no DALI import
    except ImportError:
        raise PackError("pack writes DALI indexes with wds2idx, which comes with nvidia-dali: install "
                              "nvidia-dali (the CPU wheel is enough) and run pack again") from None

    record = {"split": job.split, "tier": job.tier, "path": job.path, "index": index_path(job.path)}
    rejected, kept = [], []
    try:
        data = tar_bytes(list(_samples(job, rejected, kept)))
    except _Changed as exc:
        return {**record, "changed": str(exc), "samples": 0, "rejected": []}
    record.update(samples=len(kept), rejected=rejected)
    if not kept:  # every sample rejected: no shard (DALI cannot read an empty tar)
        return record
    # the index first, from the tar's temp file: a tar on disk always has its index beside it
    with atomic_path(out / job.path) as tmp_tar:
        tmp_tar.write_bytes(data)
        with atomic_path(out / record["index"]) as tmp_idx, \
                IndexCreator(str(tmp_tar), str(tmp_idx), verbose=False) as creator:
            creator.create_index()
    record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), first_id=kept[0], last_id=kept[-1])
    return record
