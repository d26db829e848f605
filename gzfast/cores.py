"""The cores this process may use (its CPU affinity): what the core budget of the trainer, the loaders
and prediction divides."""
from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
