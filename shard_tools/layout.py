"""The layout of a packed set: the one reader (and namer) of what `pack` writes (docs/design.md §4).

    OUT/manifest.json, OUT/rejected.csv, OUT/.pack.lock, OUT/.pack-state/ (while a pack is unfinished)
    OUT/train/<tier>/gz2-train-<tier>-NNNNNN.tar   OUT/val/gz2-val-NNNNNN.tar   OUT/test/gz2-test-NNNNNN.tar
    a DALI `.idx` next to every tar; OUT/ids.csv in a set of string-id galaxies (sample id -> catalogue id)

A sample is `<key>.jpg` (a side×side JPEG), `<key>.i64` (the sample id), `<key>.f32` (the tree's cumulative
vote fractions, absent in test shards) and, in a set packed from vote counts, `<key>.cnt` (the counts).
The manifest says which tree, whether counts are present, the image side and the id kind; a manifest
without those fields (every set packed before them) means gz2-kaggle, fractions only, 424 px, integer ids.

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
from functools import cached_property
from pathlib import Path

from . import objstore
from .ids import ID_KINDS, ID_TABLE, parse_id_table
from .layout_error import LayoutError
from .objstore import is_remote
from .schema import TIERS
from .trees import GZ2_KAGGLE, Tree, TreeError

MANIFEST = "manifest.json"
REJECTED = "rejected.csv"
LOCK = ".pack.lock"       # held (flock) by the one pack writing a set; its presence marks a folder as pack's
STATE = ".pack-state"     # per-shard records of an unfinished pack, so a re-run resumes
FORMAT = "gzfast-shards-v1"
SPLITS = ("train", "val", "test")
# What a manifest without a "sample" description of its own means (the sets packed before trees).
SAMPLE_PARTS = {"jpg": "original JPEG bytes", "f32": f"{GZ2_KAGGLE.n} labels, little-endian float32, Kaggle column order",
                "i64": "GalaxyID, little-endian int64"}
TMP_MARK = ".tmp"  # every temp name this project writes contains it (see atomic_path)
IMAGE_SIDE = 424   # the default side of packed JPEGs, as every Kaggle GZ2 image is 424×424


def sample_parts(tree: Tree, has_counts: bool, kept_originals: bool) -> dict[str, str]:
    """The manifest's description of a sample's parts."""
    parts = {"jpg": "original JPEG bytes" if kept_originals else "JPEG bytes (originals kept where already "
                                                                   "side x side JPEG, the rest re-encoded)",
             "f32": f"{tree.n} cumulative vote fractions, little-endian float32, in the order of `columns`",
             "i64": "sample id, little-endian int64 (the catalogue id, or its row in the id table)"}
    if has_counts:
        parts["cnt"] = f"{tree.n} vote counts, little-endian float32, in the order of `columns`"
    return parts


# --- names ----------------------------------------------------------------------------------------

def shard_name(split: str, tier: str | None, number: int) -> str:
    """Path of shard `number` of a split (and tier, for train), relative to the set's root."""
    if split == "train":
        return f"train/{tier}/gz2-train-{tier}-{number:06d}.tar"
    return f"{split}/gz2-{split}-{number:06d}.tar"


_SHARD_FILE = re.compile(r"(train/(high|medium|low)/gz2-train-\2|(val|test)/gz2-\3)-[0-9]{6,}\.(tar|idx)", re.ASCII)


def is_pack_name(relpath: str) -> bool:
    """Whether `relpath` (posix, relative to a set's root) is a name `pack` writes: a shard, an index, the
    manifest, rejected.csv, the id table, the lock, the resume state, or the temp name of any of these. `pack` deletes
    nothing else, so a user's notes or `test/submission.csv` inside a packed set survive a re-pack."""
    folder, _, name = relpath.rpartition("/")
    if name.startswith(".") and TMP_MARK in name:  # `.<name>.tmp<pid>` beside <name> (atomic_path)
        return is_pack_name(f"{folder}/{name[1:].rpartition(TMP_MARK)[0]}".lstrip("/"))
    return (relpath in (MANIFEST, REJECTED, LOCK, ID_TABLE) or relpath.split("/", 1)[0] == STATE
            or _SHARD_FILE.fullmatch(relpath) is not None)


def index_path(tar_path: str | os.PathLike) -> str:
    """The DALI index beside a tar: `x.tar` -> `x.idx`."""
    tar_path = str(tar_path)
    if not tar_path.endswith(".tar"):
        raise LayoutError(f"{tar_path}: a shard's name ends in .tar")
    return tar_path[:-4] + ".idx"


# --- reading a local path or an s3:// address ------------------------------------------------------

def _store():
    return objstore  # imports boto3 only on its first request


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
    """A packed set opened by its root. Read-only: `pack` is the only writer.

    Besides its shards: `tree` (the decision tree of its labels), `has_counts` (samples carry `.cnt`),
    `image_side`, `id_kind` ('integer' or 'string'), `id_column` (the catalogue's name for the id) and
    `id_names()`. Opening checks what every reader relies on (splits disjoint, thresholds in order, a known
    tree), so a bad manifest stops the trainer as it stops verify, in one line naming the field."""

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
            self.tree = Tree.from_dict(manifest["tree"], f"{self.manifest_path}: field tree") \
                if "tree" in manifest else GZ2_KAGGLE
            self.has_counts = manifest.get("has_counts", False)
            image, ids = manifest.get("image", {}), manifest.get("ids", {})
            self.image_side = int(image.get("side", IMAGE_SIDE))
            self.id_kind = ids.get("kind", "integer")
            self.id_column = str(ids.get("column", GZ2_KAGGLE.id_column))
            self.id_table = ids.get("table")
        except TreeError as exc:
            raise LayoutError(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LayoutError(f"{self.manifest_path}: manifest lacks or garbles a field ({exc!r})") from None
        problem = self._manifest_problem()
        if problem:
            raise LayoutError(f"{self.manifest_path}: {problem}; re-run `python -m shard_tools pack`")

    def _manifest_problem(self) -> str | None:
        """The first inconsistency of the manifest itself (no shard is read), or None."""
        high, low = self.thresholds["high"], self.thresholds["low"]
        if not 0 <= low <= high <= 1:
            return f"tier thresholds out of order (need 0 <= low <= high <= 1, the manifest has high {high}, low {low})"
        seen: dict[str, str] = {}
        for s in self.shards:
            if s.split not in SPLITS:
                return f"shard {s.relpath} has split {s.split!r}, not one of {', '.join(SPLITS)}"
            if (s.split == "train") != (s.tier is not None) or (s.tier is not None and s.tier not in TIERS):
                return f"shard {s.relpath} of split {s.split} has tier {s.tier!r}"
            if s.relpath in seen:
                return f"shard {s.relpath} is listed twice (as {seen[s.relpath]} and as {s.split}): splits must be disjoint"
            seen[s.relpath] = s.split
        if not isinstance(self.has_counts, bool):
            return f"has_counts is {self.has_counts!r}, not true or false"
        if self.image_side < 1:
            return f"image side {self.image_side} is not a positive number of pixels"
        if self.id_kind not in ID_KINDS or (self.id_kind == "string") != (self.id_table == ID_TABLE):
            return f"ids are {self.id_kind!r} with id table {self.id_table!r} (integer ids have none, string ids {ID_TABLE})"
        return None

    @cached_property
    def _names(self) -> dict[int, str] | None:
        if self.id_kind == "integer":
            return None
        path = self._abs(self.id_table)
        try:
            return parse_id_table(read_all(path), path)
        except (OSError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{path}: cannot read the id table ({exc}); re-run pack") from None
        except ValueError as exc:
            raise LayoutError(f"{exc}; re-run pack") from None

    def id_names(self) -> dict[int, str] | None:
        """None for integer ids (a sample id is the catalogue id); else sample id -> catalogue id."""
        return self._names

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
