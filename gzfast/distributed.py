"""Errors across the processes of a run: the rank that fails names the cause, and shares that line through
torch.distributed's key-value store (held by the launcher, so it outlives the rank), so every other rank,
whose next collective fails when that rank exits, prints the same line instead of a bare traceback."""
from __future__ import annotations

import contextlib
import datetime

ERROR_KEY = "gzfast/error"  # in torch.distributed's store: the first rank's error, for every other rank


def _rank_and_store():
    """(rank, the process group's key-value store) of a run of several processes, else (None, None)."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None, None
    try:
        return dist.get_rank(), dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private accessor: without it, each rank reports only its own error
        return dist.get_rank(), None


def share_error(message: str) -> str:
    """The message as this rank reports it (`rank N: ...` in a run of several), shared with the others;
    the first error shared is the cause, later ones are its echoes."""
    rank, store = _rank_and_store()
    if rank is None:
        return message
    message = f"rank {rank}: {message}"
    if store is not None:
        with contextlib.suppress(Exception):
            if not store.check([ERROR_KEY]):
                store.set(ERROR_KEY, message)
    return message


def error_of_another_rank(timeout_s: float = 5.0) -> str | None:
    """The error another rank shared, when a collective failed because that rank exited."""
    rank, store = _rank_and_store()
    if store is None:
        return None
    try:
        store.wait([ERROR_KEY], datetime.timedelta(seconds=timeout_s))
        return store.get(ERROR_KEY).decode()
    except Exception:  # noqa: BLE001 - the store itself may be gone with the launcher
        return None


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return [obj]
    from accelerate.utils import gather_object
    return gather_object([obj])
