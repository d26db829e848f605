"""pack's own folder: which --out it may write, its lock, its own files, and a failed write in one line.

`OUT` is pack's own folder: pack writes into an empty or new folder or into a packed set (a gzfast
manifest, `.pack.lock` or `.pack-state/`), refuses any other non-empty folder and any folder inside its
input, and deletes only names it writes itself (`layout.is_pack_name`). One pack at a time holds
`OUT/.pack.lock` (flock); its worker processes close their copy of it, so a pack stopped by a signal leaves
nobody holding it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from .catalog import readable
from .errors import UserError
from .layout import LOCK, MANIFEST, STATE, LayoutError, PackedSet, is_pack_name, is_temp_name


class PackError(UserError, ValueError):
    """An anticipated failure of a pack (a refused --out, a failed write): one line for the user."""


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


def check_outside(out: Path, folder: Path, option: str):
    """Refuses an --out inside (or equal to) an input folder: pack never writes among its input."""
    o, f = out.resolve(), folder.resolve()
    if o == f or f in o.parents:
        raise PackError(f"{out}: --out is inside {option} {folder}; pack writes its set outside its input: pick an --out "
                    f"that is not in {folder}")


@contextlib.contextmanager
def pack_lock(out: Path):
    """Holds OUT/.pack.lock (flock) for the whole pack: a second pack into OUT stops at once, naming the first.
    Yields the lock's file descriptor (worker processes close their inherited copy of it)."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PackError(f"another pack is writing {out} (pid {pid}); wait for it or pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the lock (the file stays: it marks the folder as pack's)


_ADVICE = {
    errno.ENOSPC: "free space there (or pick another --out) and re-run: finished shards are kept",
    errno.EDQUOT: "free quota there (or pick another --out) and re-run: finished shards are kept",
    errno.EROFS: "the file system is read-only; pick another --out",
    errno.EACCES: "no permission to write there; fix the folder's permissions or pick another --out",
    errno.EPERM: "no permission to write there; fix the folder's permissions or pick another --out",
}


def write_failure(exc: OSError, out: Path):
    where = readable(str(exc.filename or out))
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    advice = _ADVICE.get(exc.errno, "fix the cause and re-run pack: finished shards are kept")
    return PackError(f"cannot write {where}: {exc.strerror or exc} ({code}); {advice}; {out} has no manifest until "
                 f"a pack completes")


def own_files(out: Path):
    """Every file under `out` (posix path relative to it, path) whose name pack writes."""
    for folder, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(out).as_posix()
            if is_pack_name(rel):
                yield rel, path


def remove_temp_files(out: Path):
    """Temp names of pack's own files (a crashed or failed write, this run's or a killed one's); the lock
    keeps any other pack out, so none of them is being written."""
    for rel, path in own_files(out):
        if is_temp_name(rel.rpartition("/")[2]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
