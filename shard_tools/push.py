"""`push OUT s3://bucket/prefix`: uploads a packed set to object storage, the manifest last.

A reader opens a set by its manifest, so a push that stops half-way (or a re-push under way) is never
taken for a valid set: the previous manifest at that address is deleted first and the new one goes up
only after every shard and index. The local set is checked (sizes, counts, indexes) before anything is
uploaded. A string-id set's id table travels with it.
"""
from __future__ import annotations

import os
import sys

from . import objstore
from .layout import MANIFEST, REJECTED, LayoutError, PackedSet


def push(out: str | os.PathLike, url: str, progress: bool = True) -> tuple[int, int]:
    """Uploads the packed set at `out` to `url`; returns (files, bytes)."""
    if not objstore.is_remote(url):
        raise LayoutError(f"{url}: the destination is an s3://bucket/prefix address")
    if objstore.is_remote(out):
        raise LayoutError(f"{out}: push uploads a local packed set; this one is already in object storage")
    packed = PackedSet.open(out)
    problems = packed.problems()
    if problems:
        raise LayoutError(f"{out}: {len(problems)} problem(s), first: {problems[0]}; run `python -m shard_tools verify "
                          f"{out}`, re-run pack, then push")
    packed.id_names()  # a string-id set without a readable id table stops here, in one line
    url = url.rstrip("/")
    objstore.check_bucket(url)
    files = [(p, rel) for s in packed.shards for p, rel in ((s.path, s.relpath), (s.index, s.relpath[:-4] + ".idx"))]
    if packed.id_table:  # string ids: the table that maps sample ids back
        files.append((os.path.join(packed.root, packed.id_table), packed.id_table))
    if os.path.exists(os.path.join(packed.root, REJECTED)):
        files.append((os.path.join(packed.root, REJECTED), REJECTED))
    files.append((packed.manifest_path, MANIFEST))  # last: its arrival makes the set valid
    manifest_url = objstore.join(url, MANIFEST)
    if objstore.exists(manifest_url):
        objstore.delete(manifest_url)  # the old set stops being valid before any of its objects changes
    total = 0
    for i, (local, rel) in enumerate(files, 1):
        objstore.upload(local, objstore.join(url, rel))
        total += os.path.getsize(local)
        if progress:
            print(f"\rpush: {i}/{len(files)} files, {total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return len(files), total
