"""A stop request: SIGINT/SIGTERM ask the run to stop after the step in progress (a checkpoint is saved);
a second signal stops at once. With several processes the ranks agree at log points (no extra host
syncs), so a signal to any one rank stops every rank after the same step."""
from __future__ import annotations

import contextlib
import signal
import sys

import torch


class StopRequest:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.signum: int | None = None

    def _on_signal(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.signum = signum
        if self.accelerator.is_main_process:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step, then exiting "
                  f"(again to abort without saving)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self):
        """SIGINT and SIGTERM handled by this request while the block runs."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def requested(self, at_sync_point: bool) -> bool:
        """Whether to stop now. With several processes, only at sync points, where every rank takes the
        largest signal number any rank got (a rank that got none takes it too, for its exit status)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return self.signum is not None
        if not at_sync_point:
            return False
        flag = torch.tensor([float(self.signum or 0)], device=acc.device)
        signum = int(acc.reduce(flag, "max").item())
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)
