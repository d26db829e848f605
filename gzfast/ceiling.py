"""The compute ceiling: images/s of the real training step on synthetic tensors already on the device.

What a loader-fed rate is compared with ("of ceiling"): a loader that steals the model's cores, or makes
the GPU wait, shows as a fraction below 1 even when nobody waits on it. The trainer measures it at start
and the benchmark interleaves it with loader-fed windows; both use the functions here, so they measure
the same thing.
"""
from __future__ import annotations

import copy
import time

import torch

from .loaders import Batch


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch_size: int, image_size: int, label_count: int, device, dtype, seed: int = 0) -> Batch:
    """A normalized channels-last batch of random images and labels, on the device (no loader involved)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device, dtype)
    labels = torch.rand(batch_size, label_count, generator=gen).to(device)
    return Batch(images.contiguous(memory_format=torch.channels_last), labels, torch.zeros(batch_size, dtype=torch.int64))


def time_steps(step, batch: Batch, n: int, device) -> float:
    """Seconds for `n` calls of `step(batch)`, the device synchronized on both sides."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(batch)
    sync(device)
    return time.perf_counter() - t0


def measure_ceiling(training, step, image_size: int, label_count: int, steps: int, warmup: int) -> float | None:
    """Images/s of `step` (the trainer's training step) on a synthetic batch, over all processes. Its
    effects are undone: weights, buffers and optimizer state restored, gradients cleared, the
    accumulation counter reset."""
    if steps <= 0:
        return None
    t, acc = training, training.accelerator
    saved_model = {k: v.clone() for k, v in t.model.state_dict().items()}
    saved_optimizer, saved_step = copy.deepcopy(t.optimizer.state_dict()), acc.step
    batch = synthetic_batch(t.micro_batch, image_size, label_count, t.device, t.image_dtype)
    t.train_model.train()
    time_steps(step, batch, warmup, t.device)  # compilation and the optimizer's first steps stay out of the timing
    elapsed = time_steps(step, batch, steps, t.device)
    t.optimizer.zero_grad(set_to_none=True)
    t.model.load_state_dict(saved_model)
    t.optimizer.load_state_dict(saved_optimizer)
    acc.step = saved_step
    return steps * t.micro_batch * acc.num_processes / elapsed
