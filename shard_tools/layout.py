"""The layout of a packed set: the one reader (and namer) of what `pack` writes (DESIGN §3).

    OUT/manifest.json, OUT/rejected.csv, OUT/.pack.lock, OUT/.pack-state/ (while a pack is unfinished)
    OUT/train/<tier>/gz2-train-<tier>-NNNNNN.tar   OUT/val/gz2-val-NNNNNN.tar   OUT/test/gz2-test-NNNNNN.tar
    a DALI `.idx` next to every tar

`PackedSet.open(root)` reads a set by its root; its shard paths are absolute, so nobody joins paths by
hand. The DALI index format (`v1.2 N`, then one line a sample: `ext offset size member` repeated) is
parsed here and nowhere else. Also here: writing a file atomically, which the packer and the trainer's
checkpoints share (a crash mid-write leaves the previous file, never a half-written one).

Torch-free and DALI-free. A root is a local folder or `s3://bucket/prefix` (objstore.py does the
requests); the readers here (`read_index`, `shard_info`, `file_size`, `read_range`, `open_shard`) take a
local path or an `s3://` address alike, so nobody else tells the two apart.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"
REJECTED = "rejected.csv"
LOCK = ".pack.lock"       # held (flock) by the one pack writing a set; its presence marks a folder as pack's
STATE = ".pack-state"     # per-shard records of an unfinished pack, so a re-run resumes
FORMAT = "gzfast-shards-v1"
SPLITS = ("train", "val", "test")
SAMPLE_PARTS = {"jpg": "original JPEG bytes", "f32": "37 labels, little-endian float32, Kaggle column order",
                "i64": "GalaxyID, little-endian int64"}
TMP_MARK = ".tmp"  # every temp name this project writes contains it (see atomic_path)
IMAGE_SIDE = 424   # every packed JPEG is 424×424 (pack checks it), as every Kaggle GZ2 image is


class LayoutError(UserError, ValueError):
    """A packed set, a shard or an index that cannot be read as the layout says."""


# --- names ----------------------------------------------------------------------------------------

def shard_name(split: str, tier: str | None, number: int) -> str:
    """Path of shard `number` of a split (and tier, for train), relative to the set's root."""
    if split == "train":
        return f"train/{tier}/gz2-train-{tier}-{number:06d}.tar"
    return f"{split}/gz2-{split}-{number:06d}.tar"


_SHARD_FILE = re.compile(r"(train/(high|medium|low)/gz2-train-\2|(val|test)/gz2-\3)-[0-9]{6,}\.(tar|idx)", re.ASCII)


def is_pack_name(relpath: str) -> bool:
    """Whether `relpath` (posix, relative to a set's root) is a name `pack` writes: a shard, an index, the
    manifest, rejected.csv, the lock, the resume state, or the temp name of any of these. `pack` deletes
    nothing else, so a user's notes or `test/submission.csv` inside a packed set survive a re-pack."""
    folder, _, name = relpath.rpartition("/")
    if name.startswith(".") and TMP_MARK in name:  # `.<name>.tmp<pid>` beside <name> (atomic_path)
        return is_pack_name(f"{folder}/{name[1:].rpartition(TMP_MARK)[0]}".lstrip("/"))
    return (relpath in (MANIFEST, REJECTED, LOCK) or relpath.split("/", 1)[0] == STATE
            or _SHARD_FILE.fullmatch(relpath) is not None)


def index_path(tar_path: str | os.PathLike) -> str:
    """The DALI index beside a tar: `x.tar` -> `x.idx`."""
    tar_path = str(tar_path)
    if not tar_path.endswith(".tar"):
        raise LayoutError(f"{tar_path}: a shard's name ends in .tar")
    return tar_path[:-4] + ".idx"


# --- reading a local path or an s3:// address ------------------------------------------------------

def is_remote(path) -> bool:
    return str(path).startswith("s3://")


def _store():
    from . import objstore  # boto3 only when a set is remote
    return objstore


def file_size(path) -> int:
    return _store().size(str(path)) if is_remote(path) else os.path.getsize(path)


def path_exists(path) -> bool:
    return _store().exists(str(path)) if is_remote(path) else os.path.exists(path)


def read_range(path, start: int, length: int) -> bytes:
    if is_remote(path):
        return _store().read(str(path), start, length)
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, start)


def read_all(path) -> bytes:
    return _store().read(str(path)) if is_remote(path) else Path(path).read_bytes()


def open_shard(path):
    """A binary file object of a shard, to seek and read (a remote one is fetched whole: one request)."""
    return io.BytesIO(read_all(path)) if is_remote(path) else open(path, "rb")


# --- the DALI index -------------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexEntry:
    ext: str
    offset: int   # of the member's data in the tar
    size: int
    member: str   # the tar member's name, `<key>.<ext>`

    @property
    def key(self) -> str:
        return self.member.partition(".")[0]


def read_index(path: str | os.PathLike) -> list[list[IndexEntry]]:
    """A DALI webdataset index: per sample, its entries. Raises LayoutError if it is malformed."""
    try:
        lines = read_all(path).decode().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read the DALI index ({exc})") from None
    try:
        _version, count = lines[0].split()
        samples = []
        for line in lines[1:]:
            parts = line.split()
            if not parts or len(parts) % 4:
                raise ValueError(f"line {len(samples) + 2} is not groups of `ext offset size name`")
            samples.append([IndexEntry(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3])
                            for i in range(0, len(parts), 4)])
        if int(count) != len(samples):
            raise ValueError(f"header says {count} samples, body has {len(samples)}")
    except (ValueError, IndexError) as exc:
        raise LayoutError(f"{path}: not a DALI webdataset index ({exc})") from None
    return samples


@dataclass(frozen=True)
class ShardInfo:
    """What a loader needs to know of one tar, read off its index (no tar byte is read)."""
    path: str
    index: str
    samples: int
    labelled: bool   # train/val shards carry `.f32`, test shards do not


def shard_info(tar_path: str | os.PathLike) -> ShardInfo:
    tar_path = str(tar_path)
    idx = index_path(tar_path)
    if not path_exists(tar_path) or not path_exists(idx):
        raise LayoutError(f"{tar_path}: shard or its .idx index missing (run `make shards` / shard_tools pack)")
    entries = read_index(idx)
    if not entries:
        raise LayoutError(f"{idx}: the index lists no samples")
    index_tar_problem(tar_path, idx, entries)
    return ShardInfo(tar_path, idx, len(entries), any(e.ext == "f32" for e in entries[0]))


def index_tar_problem(tar_path: str, idx: str, entries: list[list[IndexEntry]]):
    """Raises LayoutError unless the index covers the whole tar: its last member ends inside the file and
    the tar's end-of-archive block (zeros) follows it, so no sample lies beyond what the index lists."""
    end = max(e.offset + e.size for sample in entries for e in sample)
    block = -(-end // 512) * 512
    size = file_size(tar_path)
    if end > size:
        raise LayoutError(f"{idx}: points {end - size} bytes past the end of {tar_path}; re-run pack")
    tail = read_range(tar_path, block, 512) if block < size else b""
    if tail.strip(b"\0"):
        raise LayoutError(f"{idx}: lists {len(entries)} samples but {tar_path} holds more after them; re-run pack")


# --- a packed set ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    split: str
    tier: str | None
    path: str      # absolute
    index: str     # absolute
    samples: int
    bytes: int
    sha256: str
    relpath: str   # as the manifest has it

    @property
    def labelled(self) -> bool:
        return self.split != "test"


class PackedSet:
    """A packed set opened by its root. Read-only: `pack` is the only writer."""

    def __init__(self, root: str, manifest: dict):
        self.root = root
        self.manifest = manifest
        try:
            self.shards = [Shard(s["split"], s["tier"], self._abs(s["path"]), self._abs(s["index"]), int(s["samples"]),
                                 int(s["bytes"]), s["sha256"], s["path"]) for s in manifest["shards"]]
            self.thresholds = {"high": float(manifest["thresholds"]["high"]),
                               "low": float(manifest["thresholds"]["low"])}
            if not isinstance(manifest.get("counts", {}), dict):
                raise TypeError("counts is not an object")
        except (KeyError, TypeError, ValueError) as exc:
            raise LayoutError(f"{self.manifest_path}: manifest lacks or garbles a field ({exc!r})") from None

    @classmethod
    def open(cls, root: str | os.PathLike) -> PackedSet:
        root = str(root)
        if is_remote(root):
            return cls._open_remote(root.rstrip("/"))
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise LayoutError(f"{path}: no manifest; run `make shards` or `python -m shard_tools pack` first")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LayoutError(f"{path}: unreadable manifest ({exc}); re-run `python -m shard_tools pack`") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise LayoutError(f"{path}: not a gzfast manifest (format {FORMAT} expected); re-run pack")
        return cls(str(Path(root).resolve()), manifest)

    @classmethod
    def _open_remote(cls, root: str) -> PackedSet:
        store = _store()
        url = store.join(root, MANIFEST)
        try:
            text = store.read(url)
        except store.ObjStoreError as exc:
            if str(exc).endswith("no such object"):  # push uploads the manifest last: no manifest, no set
                raise LayoutError(f"{url}: no manifest; upload a packed set with `python -m shard_tools push OUT "
                                  f"{root}` (a push that did not finish leaves none)") from None
            raise
        try:
            manifest = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LayoutError(f"{url}: unreadable manifest ({exc}); push the set again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise LayoutError(f"{url}: not a gzfast manifest (format {FORMAT} expected); push the set again")
        return cls(root, manifest)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def _abs(self, rel: str) -> str:
        return _store().join(self.root, rel) if self.remote else os.path.join(self.root, rel)

    @property
    def manifest_path(self) -> str:
        return self._abs(MANIFEST)

    def select(self, split: str, tiers=None) -> list[Shard]:
        """Shards of a split (train: optionally only `tiers`), in manifest order."""
        if split not in SPLITS:
            raise LayoutError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        return [s for s in self.shards if s.split == split and (tiers is None or s.tier in tiers)]

    def paths(self, split: str, tiers=None) -> list[str]:
        return [s.path for s in self.select(split, tiers)]

    def samples(self, split: str, tiers=None) -> int:
        return sum(s.samples for s in self.select(split, tiers))

    def problems(self, shards: list[Shard] | None = None, full: bool = False) -> list[str]:
        """What is wrong with these shards (default: all) against the manifest, cheaply: each tar's size,
        its index readable, listing the manifest's sample count and pointing inside the tar; `full` also
        hashes every tar (sha256). `shard_tools verify` is the thorough check."""
        out = []
        for s in self.shards if shards is None else shards:
            found = []
            try:
                size = file_size(s.path)
                entries = read_index(s.index)
                if size != s.bytes:
                    found.append(f"{s.path}: {size} bytes, the manifest says {s.bytes}")
                if len(entries) != s.samples:
                    found.append(f"{s.index}: lists {len(entries)} samples, the manifest says {s.samples}")
                if entries:
                    index_tar_problem(s.path, s.index, entries)
                if full and not found:
                    with open_shard(s.path) as f:
                        if hashlib.file_digest(f, "sha256").hexdigest() != s.sha256:
                            found.append(f"{s.path}: sha256 differs from the manifest")
            except OSError as exc:
                found.append(f"{exc.filename or s.path}: cannot read it ({exc.strerror})")
            except LayoutError as exc:
                found.append(str(exc))
            out += found
        return out

    @property
    def counts(self) -> dict:
        return dict(self.manifest.get("counts", {}))

    @property
    def fingerprint(self) -> str:
        """What a run trained on: the input fingerprint and every shard's sha256 (checked on --resume)."""
        h = hashlib.sha256(str(self.manifest.get("input_fingerprint", "")).encode())
        for s in self.shards:
            h.update(f"{s.relpath}:{s.sha256}\n".encode())
        return h.hexdigest()


# --- writing files atomically ---------------------------------------------------------------------

def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temp path beside `path` to write; on success it is fsynced and renamed over `path`, on
    any error it is removed. A crash, even kill -9, mid-write leaves the previous `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            # A failed write() (disk full, quota) names no file: name the one being written.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def is_temp_name(name: str) -> bool:
    return TMP_MARK in name
