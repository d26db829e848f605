"""The next epoch's loader, built in a background thread while the current epoch ends and validation runs,
so a curriculum stage change costs what an ordinary epoch boundary does."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class NextLoader:
    """`submit(epoch)` starts building that epoch's loader (`build(epoch)`, then its `prepare()` if it has
    one: a DALI pipeline runs up to its first batch); `take(epoch)` returns it, or builds it now when
    nothing was submitted for that epoch."""

    def __init__(self, build: Callable[[int], object], device: torch.device):
        self.build, self.device = build, device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-epoch-loader")
        self.pending: tuple[int, Future] | None = None

    def _build_prepared(self, epoch: int):
        # a new thread starts on cuda:0: give it this process's device
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            loader = self.build(epoch)
            prepare = getattr(loader, "prepare", None)  # optional: a loader that builds lazily has none
            return prepare() if prepare else loader

    def submit(self, epoch: int):
        self.pending = (epoch, self.pool.submit(self._build_prepared, epoch))

    def take(self, epoch: int):
        if self.pending is not None and self.pending[0] == epoch:
            future, self.pending = self.pending[1], None
            return future.result()
        return self.build(epoch)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
