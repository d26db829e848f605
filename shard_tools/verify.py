"""`verify`: re-reads a packed set and checks it against its manifest (DESIGN §3).

Per shard: present, byte size and sha256 as recorded; a plain tar of regular files `<id>.<ext>`,
ascending ids, every sample complete (jpg, i64, and f32 outside test) with consistent contents; the
DALI `.idx` agrees with the tar's real offsets and sizes. Across shards: ids unique, train/val/test
disjoint, sample counts add up. `--decode` also decodes every JPEG.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import tarfile

import numpy as np

from . import schema
from .catalog import jpeg_problem
from .layout import LayoutError, PackedSet, path_exists, read_all, read_index


def check_shard(args) -> tuple[list[str], list[int]]:
    """Problems found in one shard, and the ids it holds."""
    shard, decode, high, low = args
    problems: list[str] = []
    ids: list[int] = []
    name = shard.relpath
    try:
        if not path_exists(shard.path):
            return [f"{name}: shard file missing"], ids
        data = read_all(shard.path)  # a local file or an s3:// object
    except OSError as exc:
        return [f"{name}: cannot read the shard ({exc.strerror})"], ids
    except LayoutError as exc:  # the object store refused or did not answer
        return [f"{name}: cannot read the shard ({exc})"], ids
    if len(data) != shard.bytes:
        problems.append(f"{name}: size {len(data)} bytes, manifest says {shard.bytes}")
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        problems.append(f"{name}: sha256 differs from the manifest")
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            parts: dict[str, dict[str, bytes]] = {}
            order: list[str] = []
            for m in members:
                if not m.isfile():
                    problems.append(f"{name}: member {m.name} is not a regular file")
                    continue
                key, _, ext = m.name.partition(".")
                if key not in parts:
                    parts[key] = {}
                    order.append(key)
                parts[key][ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as exc:
        return problems + [f"{name}: not a readable tar ({exc})"], ids
    want = {"jpg", "i64", "f32"} if shard.labelled else {"jpg", "i64"}
    for key in order:
        sample = parts[key]
        where = f"{name}: sample {key}"
        if set(sample) != want:
            problems.append(f"{where}: has parts {sorted(sample)}, expected {sorted(want)}")
        if not key.isdigit():
            problems.append(f"{where}: key is not a GalaxyID")
            continue
        gid = int(key)
        ids.append(gid)
        if "i64" in sample and (len(sample["i64"]) != 8 or np.frombuffer(sample["i64"], "<i8")[0] != gid):
            problems.append(f"{where}: .i64 does not hold the id")
        if "f32" in sample:
            if len(sample["f32"]) != 148:
                problems.append(f"{where}: .f32 is {len(sample['f32'])} bytes, expected 148")
            else:
                labels = np.frombuffer(sample["f32"], "<f4")
                if not schema.check_constraints(labels, 1e-3)[0]:
                    problems.append(f"{where}: labels break the decision tree or are out of range")
                elif shard.tier and schema.tier_of(schema.confidence(labels), high, low) != shard.tier:
                    problems.append(f"{where}: confidence puts it in another tier than {shard.tier}")
        if decode and "jpg" in sample:
            why = jpeg_problem(sample["jpg"])
            if why:
                problems.append(f"{where}: {why}")
    if ids != sorted(ids):
        problems.append(f"{name}: samples not in ascending GalaxyID order")
    if len(order) != shard.samples:
        problems.append(f"{name}: {len(order)} samples, manifest says {shard.samples}")
    # The DALI index must point at the real data offsets, or DALI reads garbage.
    index_name = shard.relpath[:-4] + ".idx"
    try:
        index = read_index(shard.index)
        real = [(m.name.partition(".")[2], m.offset_data, m.size, m.name) for m in members if m.isfile()]
        flat = [(e.ext, e.offset, e.size, e.member) for sample in index for e in sample]
        if flat != real:
            bad = next((a, b) for a, b in zip(flat + [None] * len(real), real + [None] * len(flat)) if a != b)
            problems.append(f"{index_name}: index disagrees with the tar at {bad[1] or bad[0]} "
                            f"(index has {bad[0]})")
    except LayoutError as exc:
        problems.append(f"{index_name}: unreadable DALI index ({exc})")
    return problems, ids


def verify(out: str | os.PathLike, decode: bool = False, workers: int | None = None) -> list[str]:
    """All problems found in the packed set at `out` (empty list: it is sound)."""
    packed = PackedSet.open(out)
    high, low = packed.thresholds["high"], packed.thresholds["low"]
    jobs = [(s, decode, high, low) for s in packed.shards]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(check_shard, jobs)
    else:
        results = [check_shard(j) for j in jobs]
    problems = [p for probs, _ in results for p in probs]
    seen: dict[int, str] = {}
    for shard, (_, ids) in zip(packed.shards, results):
        for gid in ids:
            if gid in seen:
                problems.append(f"{shard.relpath}: sample {gid} also in {seen[gid]}"
                                + (" (train/val/test overlap)" if not seen[gid].startswith(shard.split) else ""))
            else:
                seen[gid] = shard.relpath
    accepted = packed.counts.get("accepted")
    if len(seen) != accepted:
        problems.append(f"manifest: counts {accepted} accepted samples, shards hold {len(seen)}")
    return problems
