"""`verify`: re-reads a packed set and checks it against its manifest (docs/design.md §4).

Per shard: present, byte size and sha256 as recorded; a plain tar of regular files `<id>.<ext>`,
ascending ids, every sample complete (jpg, i64, and f32 outside test, cnt where the set has counts) with
consistent contents: f32 and cnt as long as the manifest's tree, labels obeying the tree and in their
tier, counts whole and giving the labels; the DALI `.idx` agrees with the tar's real offsets and sizes.
Across shards: ids unique, train/val/test disjoint, sample counts add up, every sample in the id table
of a string-id set. `--decode` also decodes every JPEG (the set's side, RGB or greyscale). The
manifest-level checks every reader needs run in `PackedSet.open`.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import tarfile

import numpy as np

from .images import stored_jpeg_problem
from .layout import LayoutError, PackedSet, path_exists, read_all, read_index
from .schema import tier_of
from .trees import Tree


def _label_problems(where: str, sample: dict[str, bytes], tree: Tree, tier: str | None, high: float, low: float):
    """What is wrong with a sample's .f32 (and .cnt): lengths from the tree, the tree obeyed, its tier, the
    counts whole and giving the fractions."""
    size = 4 * tree.n
    labels = counts = None
    for ext in ("f32", "cnt"):
        if ext in sample and len(sample[ext]) != size:
            yield f"{where}: .{ext} is {len(sample[ext])} bytes, expected {size} ({tree.n} answers of the {tree.name} tree)"
        elif ext in sample:
            labels, counts = (np.frombuffer(sample[ext], "<f4"), counts) if ext == "f32" else \
                (labels, np.frombuffer(sample[ext], "<f4"))
    if labels is not None:
        if not tree.check_constraints(labels, 1e-3)[0]:
            yield f"{where}: labels break the decision tree or are out of range"
        elif tier and tier_of(tree.confidence(labels), high, low) != tier:
            yield f"{where}: confidence puts it in another tier than {tier}"
    if counts is not None:
        if not (np.isfinite(counts).all() and (counts >= 0).all() and (counts == np.round(counts)).all()):
            yield f"{where}: .cnt holds a count that is not a whole number >= 0"
        elif labels is not None and not np.allclose(tree.fractions_from_counts(counts), labels, atol=1e-5):
            yield f"{where}: .f32 does not follow from its .cnt vote counts"


def _sample_problems(where: str, key: str, sample: dict[str, bytes], want: set[str], ids: list[int]) -> list[str]:
    """Its parts and its key (an integer, held by .i64); appends the id to `ids`."""
    out = [] if set(sample) == want else [f"{where}: has parts {sorted(sample)}, expected {sorted(want)}"]
    if not (key.isascii() and key.isdigit()):
        return out + [f"{where}: key is not a sample id (an integer)"]
    ids.append(int(key))
    if "i64" in sample and (len(sample["i64"]) != 8 or np.frombuffer(sample["i64"], "<i8")[0] != int(key)):
        out.append(f"{where}: .i64 does not hold the id")
    return out


def check_shard(args) -> tuple[list[str], list[int]]:
    """Problems found in one shard, and the ids it holds."""
    shard, decode, high, low, tree, has_counts, side = args
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
    label_parts = {"f32", "cnt"} if has_counts else {"f32"}
    want = {"jpg", "i64"} | (label_parts if shard.labelled else set())
    for key in order:
        problems += _sample_problems(f"{name}: sample {key}", key, parts[key], want, ids)
        if key.isascii() and key.isdigit():
            problems += _label_problems(f"{name}: sample {key}", parts[key], tree, shard.tier, high, low)
            if decode and "jpg" in parts[key]:
                why = stored_jpeg_problem(parts[key]["jpg"], side)
                problems += [f"{name}: sample {key}: {why}"] if why else []
    if ids != sorted(ids):
        problems.append(f"{name}: samples not in ascending sample id order")
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
    jobs = [(s, decode, high, low, packed.tree, packed.has_counts, packed.image_side) for s in packed.shards]
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
    return problems + _id_table_problems(packed, seen)


def _id_table_problems(packed: PackedSet, seen: dict[int, str]) -> list[str]:
    """A string-id set's table must name every sample it holds."""
    try:
        names = packed.id_names()
    except LayoutError as exc:
        return [str(exc)]
    if names is None:
        return []
    missing = sorted(set(seen) - set(names))
    return [f"{packed.id_table}: no catalogue id for sample {sid} (in {seen[sid]})" for sid in missing[:10]]
