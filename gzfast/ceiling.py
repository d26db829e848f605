"""The compute ceiling: images/s of the real training step on synthetic tensors already on the device.

What a loader-fed rate is compared with ("of ceiling"): a loader that steals the model's cores, or makes
the GPU wait, shows as a fraction below 1 even when nobody waits on it. Only a ratio measured in one run,
with both sides under the same load, means anything on a shared machine, so the benchmark measures the
two sides as interleaved windows (synthetic, fed, synthetic, fed, ...; the median of each), and the
trainer's start-up probe warms up by time, not by a handful of steps, before it measures.
"""
from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from .loaders import Batch

WARMUP_S = 1.5     # the trainer's probe: warm-up time after the first (compiling) step
WINDOW_S = 0.5     # ... and the least length of each timed window
PROBE_WINDOWS = 3  # ... of which the fastest is the ceiling
LONG_CPU_EPOCH_S = 30 * 60  # an epoch longer than this on a CPU is a GPU recipe run on the wrong machine
clock = time.perf_counter  # every timing here reads this (a test gives it a clock of its own)


def sync(device: torch.device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch_size: int, image_size: int, label_count: int, device, dtype, seed: int = 0) -> Batch:
    """A normalized channels-last batch of random images and labels, on the device (no loader involved)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device, dtype)
    labels = torch.rand(batch_size, label_count, generator=gen).to(device)
    return Batch(images.contiguous(memory_format=torch.channels_last), labels, torch.zeros(batch_size, dtype=torch.int64))


@dataclass
class Window:
    """One timed stretch of steps: images stepped, seconds (device synchronized at both ends), and the part
    of them the host spent blocked on the batch source."""
    images: int
    seconds: float
    wait_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def record(self) -> dict:
        return {"images_per_s": self.rate, "data_wait_s": self.wait_s, "window_s": self.seconds, "images": self.images}


def run_window(step, batches: Iterator[Batch], n: int, device) -> Window:
    """Takes `n` batches from `batches` and steps each (`step` None: only takes them, a loader alone)."""
    sync(device)
    images, wait = 0, 0.0
    t0 = clock()
    for _ in range(n):
        t = clock()
        batch = next(batches)
        wait += clock() - t
        if step is not None:
            step(batch)
        images += len(batch)
    sync(device)
    return Window(images, clock() - t0, wait)


def time_steps(step, batch: Batch, n: int, device) -> float:
    """Seconds for `n` calls of `step(batch)`, the device synchronized on both sides."""
    return run_window(step, itertools.repeat(batch), n, device).seconds


def round_up(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def warm_up(step, batch: Batch, device, min_steps: int = 1, min_s: float = WARMUP_S, multiple: int = 1,
            agree: Callable[[float], float] | None = None) -> float:
    """Steps until `min_steps` steps and `min_s` seconds after the first step (which pays for compilation)
    have passed and the step has stopped getting faster (allocator growth, kernel selection and caches
    settle over the first steps), or 4 x `min_s` at most; returns the last chunk's seconds per step, to
    size the windows that follow. A chunk is `multiple` steps (a whole accumulation cycle). `agree(x)`
    is the largest x over all processes: with several, each step's gradient all-reduce pairs them up,
    so they stop together (when the last is ready) and size their windows by the slowest."""
    agree = agree or (lambda x: x)
    time_steps(step, batch, multiple, device)
    done, start, previous = 0, clock(), math.inf
    while True:
        per_step = time_steps(step, batch, multiple, device) / multiple
        done += multiple
        elapsed = clock() - start
        settled, previous = per_step > 0.9 * previous, per_step
        ready = done >= min_steps and elapsed >= min_s and (settled or elapsed >= 4 * min_s)
        if agree(0.0 if ready else 1.0) == 0.0:
            return agree(per_step)


def steps_for(seconds: float, per_step: float, minimum: int = 1, multiple: int = 1) -> int:
    """Steps that make a window of at least `seconds` (and at least `minimum`), a multiple of `multiple`."""
    wanted = math.ceil(seconds / per_step) if per_step > 0 and math.isfinite(per_step) else minimum
    return round_up(max(minimum, wanted), multiple)


@dataclass
class Interleaved:
    """Synthetic and loader-fed windows taken in turn on one step: each side's median, and their ratio."""
    synthetic: list[Window] = field(default_factory=list)
    fed: list[Window] = field(default_factory=list)
    window_steps: int = 0
    lead_in: int = 0
    epochs_opened: int = 0

    @property
    def ceiling(self) -> float:
        return statistics.median(w.rate for w in self.synthetic)

    @property
    def fed_rate(self) -> float:
        return statistics.median(w.rate for w in self.fed)

    @property
    def of_ceiling(self) -> float:
        return self.fed_rate / self.ceiling

    def record(self) -> dict:
        pairs = [f.rate / s.rate for s, f in zip(self.synthetic, self.fed)]
        return {"ceiling_images_per_s": self.ceiling, "fed_images_per_s": self.fed_rate, "of_ceiling": self.of_ceiling,
                "pair_ratios": pairs, "window_steps": self.window_steps, "lead_in": self.lead_in,
                "loader_epochs": self.epochs_opened,
                "synthetic_windows": [w.record() for w in self.synthetic], "fed_windows": [w.record() for w in self.fed]}


class _Epochs:
    """Batches from successive loader epochs, one timed window never spanning two: a window that would not
    fit in what is left of the epoch starts in a fresh one (its build and first batches untimed)."""

    def __init__(self, open_epoch: Callable[[int], Iterable[Batch]]):
        self.open_epoch, self.opened, self.it, self.left = open_epoch, 0, iter(()), 0

    def ensure(self, n: int):
        if self.left >= n:
            return
        loader = self.open_epoch(self.opened)
        self.opened += 1
        self.it, self.left = iter(loader), len(loader)
        if self.left < n:
            raise ValueError(f"a loader epoch of {self.left} batches cannot hold a window of {n}")

    def __next__(self) -> Batch:
        self.left -= 1
        return next(self.it)


def interleave(step, synthetic: Batch, open_epoch: Callable[[int], Iterable[Batch]], device, *, rounds: int,
               window_steps: int, lead_in: int = 2, on_side: Callable[[str], None] | None = None) -> Interleaved:
    """`rounds` pairs of windows of `window_steps` steps: one on `synthetic` (the ceiling), one on batches of
    loader epochs from `open_epoch(k)` (k = 0, 1, ...). Before each fed window, `lead_in` fed batches are
    stepped untimed: a loader queue that filled up during the synthetic window would otherwise give the
    fed window a head start. `on_side("synthetic" | "fed")` runs before each side's turn (the benchmark
    gives torch its share of the cores there). The step must be warmed up already. Raises ValueError when
    an epoch is too short for one window."""
    out = Interleaved(window_steps=window_steps, lead_in=lead_in)
    fed = _Epochs(open_epoch)
    same = itertools.repeat(synthetic)
    switch = on_side or (lambda _side: None)
    for _ in range(rounds):
        switch("synthetic")
        out.synthetic.append(run_window(step, same, window_steps, device))
        switch("fed")
        fed.ensure(lead_in + window_steps)
        for _ in range(lead_in):
            step(next(fed))
        out.fed.append(run_window(step, fed, window_steps, device))
    out.epochs_opened = fed.opened
    return out


def probe_steps_per_s(step, batch: Batch, device, steps: int, warmup: int, *, warmup_s: float = WARMUP_S,
                      window_s: float = WINDOW_S, windows: int = PROBE_WINDOWS, multiple: int = 1,
                      agree: Callable[[float], float] | None = None) -> float:
    """Steps/s of `step(batch)`: a warm-up of at least `warmup` steps and `warmup_s` seconds, then
    `windows` windows of at least `steps` steps and `window_s` seconds each, of which the fastest counts
    (noise on a shared machine only ever slows a window down). With several processes, `agree` (see
    warm_up) makes every one take the same steps."""
    per_step = warm_up(step, batch, device, warmup, warmup_s, multiple, agree)
    n = steps_for(window_s, per_step, steps, multiple)
    return max(n / time_steps(step, batch, n, device) for _ in range(max(1, windows)))


def measure_ceiling(training, step, image_size: int, label_count: int, steps: int, warmup: int, *,
                    warmup_s: float = WARMUP_S, window_s: float = WINDOW_S, windows: int = PROBE_WINDOWS) -> float | None:
    """Images/s of `step` (the trainer's training step) on a synthetic batch, over all processes, by
    `probe_steps_per_s`; `steps` <= 0: no probe (None). Windows are whole accumulation cycles. Its effects
    are undone: weights, buffers and optimizer state restored, gradients cleared, the accumulation
    counter reset."""
    if steps <= 0:
        return None
    t, acc = training, training.accelerator
    saved_model = {k: v.clone() for k, v in t.model.state_dict().items()}
    saved_optimizer, saved_step = copy.deepcopy(t.optimizer.state_dict()), acc.step
    batch = synthetic_batch(t.micro_batch, image_size, label_count, t.device, t.image_dtype)
    t.train_model.train()

    def agree(x: float) -> float:  # the largest over the processes (they must step in lockstep)
        return float(acc.reduce(torch.tensor([x], device=t.device, dtype=torch.float64), "max").item())

    rate = probe_steps_per_s(step, batch, t.device, steps, warmup, warmup_s=warmup_s, window_s=window_s,
                             windows=windows, multiple=max(1, getattr(acc, "gradient_accumulation_steps", 1)),
                             agree=agree if acc.num_processes > 1 else None)
    t.optimizer.zero_grad(set_to_none=True)
    t.model.load_state_dict(saved_model)
    t.optimizer.load_state_dict(saved_optimizer)
    acc.step = saved_step
    return rate * t.micro_batch * acc.num_processes


def ceiling_report(fed_rate: float, ceiling: float | None) -> dict:
    """The fed rate against the ceiling, as a record (`of_ceiling`, `ceiling_probe_error`) and the text for
    a console line. Above the ceiling means the probe under-measured: that is reported as a probe error
    and never printed as a fraction."""
    if not ceiling:
        return {"of_ceiling": None, "ceiling_probe_error": False, "text": ""}
    ratio = fed_rate / ceiling
    if ratio > 1.0:
        return {"of_ceiling": None, "ceiling_probe_error": True,
                "text": f"faster than the start-up probe's ceiling of {ceiling:,.0f} img/s: a probe error, no fraction"}
    return {"of_ceiling": ratio, "ceiling_probe_error": False, "text": f"{ratio:.0%} of the ceiling"}


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds / 3600:.1f} h"


def expected_epoch_line(ceiling: float | None, samples: int, cuda: bool) -> str:
    """What an epoch of `samples` training images will take at best (the ceiling; loading and validation
    add to it), and on a CPU, when that is over half an hour, that this is a GPU recipe and what to run."""
    if not ceiling:
        return "expected epoch time: not known (no ceiling probe)"
    seconds = samples / ceiling
    line = (f"expected epoch time: at least {human_seconds(seconds)} ({samples:,} images at the ceiling of "
            f"{ceiling:,.0f} img/s; loading and validation add to it)")
    if not cuda and seconds > LONG_CPU_EPOCH_S:
        line += ("; on a CPU this is the GPU recipe: `make run` trains the CPU-sized one "
                 "(gzfast/configs/cpu_small.yaml) in minutes")
    return line
