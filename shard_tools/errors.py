"""One way to report a user's error: one base class, and one runner that every entry point uses.

An error the user can fix (bad input, a refused folder, a missing file, a setting that cannot work) is
a `UserError`, or a subclass that says where it comes from. `run_command` turns it, and the failures
that are the machine's rather than the code's (a full disk, a folder we may not write, out of memory,
Ctrl-C), into one line `prog: error: what, where, what to do` on stderr and an exit code; anything else
is a bug and keeps its traceback.

Torch-free: the out-of-memory case is recognised only when torch is already imported.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An anticipated failure, for the user to fix. `exit_code` is what the command exits with."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line messages (its type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


IO_ADVICE = "fix the cause and run the command again"


def describe(exc: BaseException, io_advice: str = IO_ADVICE) -> str | None:
    """The one-line message for an anticipated failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return (f"out of GPU memory ({first_line(exc)}); lower --batch-size (or raise --grad-accum to keep the "
                f"global batch)")
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size or the image size"
    if isinstance(exc, OSError):
        where = exc.filename or "a file"
        return f"cannot write or read {where}: {exc.strerror or exc}; {io_advice}"
    return None


INTERRUPTED = "interrupted; run the same command again to continue (finished work is kept)"


def run_command(prog: str, command: Callable[[], int | None], report: Callable[[str], str] | None = None,
                interrupted: str = INTERRUPTED, io_advice: str = IO_ADVICE) -> int:
    """Runs `command()`; returns its exit code (None counts as 0), or prints an anticipated failure as one
    line `prog: error: ...` and returns the error's exit code. `report` may rewrite the message (the
    trainer prefixes the rank and shares it with the other ranks); `interrupted` is what Ctrl-C says and
    `io_advice` what follows a failed read or write."""
    try:
        return command() or 0
    except KeyboardInterrupt:
        print(f"{prog}: error: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs right here
        message = describe(exc, io_advice)
        if message is None:
            raise
        print(f"{prog}: error: {report(message) if report else message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
