"""Will it fit? The memory a training or prediction configuration needs, estimated before it is allocated.

Activations come from one forward pass on PyTorch's `meta` device (shapes only, no data, no memory):
autograd's saved-tensor hooks see every tensor the backward pass would keep. Weights, gradients and
AdamW's two moments follow from the parameter counts. The estimate is compared with what this machine
has free (`MemAvailable` and the cgroup limit on a CPU, `torch.cuda.mem_get_info` on a GPU), so a
configuration that cannot fit stops with one line before it is started, instead of being killed by the
out-of-memory killer minutes later.

Calibrated on the CPU: the resident-memory growth of two real AdamW steps of resnet10t and convnext_atto
(batches 32-256, 48-96 px) was 1.0-1.25x the saved tensors plus the optimizer's state;
`ACTIVATION_FACTOR` covers the backward pass's transient buffers. A compiled model keeps less, so on a
GPU the estimate errs on the safe side.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from shard_tools.errors import UserError

from .config import ConfigError, TrainConfig

GIB = 2**30
ACTIVATION_FACTOR = 1.25           # backward's transient buffers on top of what autograd keeps
CPU_RESERVE = GIB // 4             # the allocator's slack, the loader's own buffers
GPU_RESERVE = 2 * GIB              # cuDNN/cuBLAS workspaces, the compiler's buffers, DALI's pipeline
ADAMW_STATES = 2                   # exp_avg and exp_avg_sq, float32 like the weights
LOADER_QUEUE = 4                   # batches a CPU loader holds ahead (prefetch, workers)
TRAINING_HINT = ("lower --batch-size (or raise --grad-accum to keep the global batch) or --image-size; "
                 "on a CPU, `make run`'s recipe is --config gzfast/configs/cpu_small.yaml")


class MemoryLimitError(ConfigError, UserError):
    """A configuration whose estimated memory exceeds what the machine has free; the message says both and
    what to lower."""


@dataclass
class MemoryEstimate:
    what: str            # the configuration, in words
    batch_size: int      # per process, what the per-sample part scales with
    weights: int
    gradients: int
    optimizer: int
    activations: int     # kept for the backward pass (training) or the largest live pair (inference)
    batch: int           # the input batch on the device
    reserve: int         # workspaces and loader buffers

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.batch + self.reserve

    @property
    def fixed(self) -> int:
        """What does not scale with the batch."""
        return self.weights + self.gradients + self.optimizer + self.reserve

    def largest_batch(self, available: int) -> int:
        """The largest power-of-two batch that would fit in `available` bytes (0: not even one sample)."""
        per_sample = (self.activations + self.batch) / max(self.batch_size, 1)
        fits = int((available - self.fixed) // per_sample) if per_sample > 0 else self.batch_size
        return 2 ** int(math.log2(fits)) if fits >= 1 else 0

    def describe(self) -> str:
        state = self.weights + self.gradients + self.optimizer
        return (f"{gib(self.total)} ({self.what}: activations {gib(self.activations)}, weights"
                f"{' + gradients + AdamW' if self.optimizer else ''} {gib(state)}, batch {gib(self.batch)}, "
                f"reserve {gib(self.reserve)})")

    def record(self) -> dict:
        return {"what": self.what, "total_bytes": self.total, "activations_bytes": self.activations,
                "state_bytes": self.weights + self.gradients + self.optimizer, "batch_size": self.batch_size}


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.0f} MiB"


def _meta_model(model_name: str, head: str, freeze_stages: int):
    """The model built on the meta device: its shapes without its memory."""
    from .model import GZ2Model, freeze
    with torch.device("meta"):
        model = GZ2Model(model_name, head)
    if freeze_stages:
        freeze(model, freeze_stages)
    return model


def _compute_dtype(precision: str) -> torch.dtype:
    """The dtype the forward pass computes in: bf16 under autocast, float32 otherwise (norms stay float32
    under autocast; the factor covers that)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _saved_bytes(model, batch_size: int, image_size: int, dtype: torch.dtype) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (parameters left out)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage()._cdata
        if key not in params:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    x = torch.empty(batch_size, 3, image_size, image_size, device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.to(dtype)(x.contiguous(memory_format=torch.channels_last))
    return sum(seen.values())


def _largest_pair(model, batch_size: int, image_size: int, dtype: torch.dtype) -> int:
    """Inference keeps nothing for backward: its peak is about a layer's input and output together."""
    sizes = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.to(dtype)(torch.empty(batch_size, 3, image_size, image_size, device="meta", dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return 3 * max(sizes)


def _batch_bytes(pixels: int, batch: int, cuda: bool) -> int:
    """The batch on the device (float32 images and labels), and on a CPU also the loader's queue of
    batches being prepared (a few, as float32)."""
    on_device = pixels * 4 + batch * 37 * 4
    return on_device if cuda else on_device + LOADER_QUEUE * pixels * 4


def estimate_training_bytes(cfg: TrainConfig, micro_batch: int | None = None, cuda: bool | None = None) -> MemoryEstimate:
    """The memory one training process of the resolved `cfg` needs: its `micro_batch` (default: the
    global batch over grad-accum, as one process runs it) at `cfg.image_size`, the model with its frozen
    stages, gradients and AdamW state of the trainable parameters."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    batch = micro_batch or max(1, cfg.batch_size // max(cfg.grad_accum, 1))
    model = _meta_model(cfg.model, cfg.head, cfg.freeze_stages or 0)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = _compute_dtype(cfg.precision)
    saved = _saved_bytes(model, batch, cfg.image_size, dtype)
    pixels = batch * 3 * cfg.image_size ** 2
    return MemoryEstimate(
        what=f"{cfg.model}, batch {batch} at {cfg.image_size} px, {cfg.precision}, stem + {cfg.freeze_stages or 0} "
             f"stage(s) frozen", batch_size=batch, weights=4 * params, gradients=4 * trainable,
        optimizer=4 * ADAMW_STATES * trainable, activations=int(ACTIVATION_FACTOR * saved),
        batch=_batch_bytes(pixels, batch, cuda), reserve=GPU_RESERVE if cuda else CPU_RESERVE)


def estimate_inference_bytes(model_name: str, batch_size: int, image_size: int, precision: str = "fp32",
                             head: str = "sigmoid", cuda: bool | None = None) -> MemoryEstimate:
    """The memory a prediction process needs: weights and the largest live activations of a batch."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    model = _meta_model(model_name, head, 0)
    params = sum(p.numel() for p in model.parameters())
    dtype = _compute_dtype(precision)
    pixels = batch_size * 3 * image_size ** 2
    return MemoryEstimate(what=f"{model_name}, batch {batch_size} at {image_size} px, {precision}, inference",
                          batch_size=batch_size, weights=4 * params, gradients=0, optimizer=0,
                          activations=_largest_pair(model, batch_size, image_size, dtype),
                          batch=_batch_bytes(pixels, batch_size, cuda), reserve=GPU_RESERVE if cuda else CPU_RESERVE)


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = Path(path).read_text().strip()
        return None if text == "max" else int(text)
    return None


def available_bytes(device: torch.device | str | None = None) -> tuple[int, str]:
    """(bytes free for this process, where that figure comes from) on `device` (default: the GPU when
    there is one)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}"
    candidates = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
        candidates.append((int(line.split()[1]) * 1024, "MemAvailable"))
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 2**60:
            candidates.append((max(0, cap - used), "the cgroup's memory limit"))
    if not candidates:
        return 2**62, "unknown (no /proc/meminfo)"
    free, source = min(candidates)
    return free, f"available on this machine ({source})"


def check_fits(estimate: MemoryEstimate, device: torch.device | str | None = None, hint: str = TRAINING_HINT,
               sharing: int = 1) -> str:
    """Raises MemoryLimitError (one line: the estimate, what is available, what to lower) when `estimate`
    exceeds what `device` has free, divided among `sharing` processes of this machine; else returns a
    note saying both."""
    free, source = available_bytes(device)
    free //= max(1, sharing)
    if estimate.total <= free:
        return f"memory: about {estimate.describe()}; {gib(free)} {source}{' per process' if sharing > 1 else ''}"
    largest = estimate.largest_batch(free)
    fits = f" (a batch of {largest} would fit)" if largest else " (not even a batch of 1 fits)"
    raise MemoryLimitError(f"this configuration needs about {estimate.describe()}, more than the {gib(free)} "
                           f"{source}{' per process' if sharing > 1 else ''}; {hint}{fits}")
