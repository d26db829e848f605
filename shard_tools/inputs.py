"""Reading input files safely: only regular files, told apart by type before anything reads them.

A FIFO, a socket or a device named like an image (or in a catalogue) would block a read or stream
without end; pack rejects it by its type instead. `read_regular` opens without blocking and checks the
type of what it opened, so a file swapped for a FIFO after the first check still cannot hang a pack.
"""
from __future__ import annotations

import hashlib
import os
import stat

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFile(OSError):
    """What should be a file is a FIFO, socket, device or folder."""


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a link to one), else what it is ('a FIFO', ...); OSError if it cannot be
    looked at (FileNotFoundError when missing)."""
    return _kind(os.stat(path).st_mode)


def kind_reason(kind: str) -> str:
    return f"not a regular file ({kind}); pack reads only regular files"


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file; NotRegularFile for anything else, OSError if unreadable. Never blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFile(0, kind_reason(kind), str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def file_digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def path_digest(path: str | os.PathLike) -> str:
    """`size:blake2b` of a regular file; for anything else a marker of what it was, so an input's fingerprint
    changes when it does."""
    try:
        return file_digest(read_regular(path))
    except NotRegularFile as exc:
        return f"not-a-file:{exc.strerror}"
    except OSError as exc:  # rejected later with its reason; the fingerprint records that it failed
        return f"unreadable:{exc.errno}"
