"""Model, optimizer and Accelerator from a resolved `TrainConfig`: the one setup that the trainer and
`benchmarks/epoch_time.py` share, so a benchmark measures the step that training runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from shard_tools.errors import UserError

from .config import ConfigError, TrainConfig, first_line
from .cores import usable_cores  # noqa: F401 - also the benchmark's

if TYPE_CHECKING:
    from .model import GZ2Model
# .model (timm, torchvision: seconds to import) is imported where a model is built, so the core budget
# and the benchmark's loader-only paths start quickly.


def budget_cores(loader: str, workers: int | None, cuda: bool, processes: int = 1) -> tuple[int, int, str]:
    """(torch intra-op threads, loader workers, why) for one process: on a CPU their sum never exceeds the
    cores this process may use, so the loader cannot quietly take the model's cores. The PIL loader
    decodes at the output's DCT scale cheaply enough to run inside the training process (0 workers)."""
    cores = max(1, usable_cores() // processes)
    if cuda:  # the GPU computes; the host threads only feed it, on every core but the training loop's
        threads = workers if workers is not None else max(1, cores - 1)
        return torch.get_num_threads(), threads, f"{cores} cores: {loader} with {threads} worker(s), the GPU computes"
    if workers is None:
        workers = 0 if loader == "pil" else 1
    if loader == "dali-cpu":
        workers = max(1, workers)  # DALI runs at least one thread of its own
    workers = min(workers, cores - 1)
    torch_threads = max(1, cores - workers)
    where = "inside the training process" if workers == 0 else f"on {workers} worker(s)"
    return torch_threads, workers, f"{cores} cores: torch {torch_threads} thread(s), loader {loader} {where}"


def backend_settings(cfg: TrainConfig, cuda: bool) -> dict[str, bool]:
    """The speed switches for this run: cuDNN's kernel search (the shapes are fixed; it picks the fastest
    once) unless --deterministic; TF32 matmuls for an fp32 run on a GPU (bf16 runs use bf16 already);
    AdamW's fused kernel on a GPU (one launch for all parameters, its step counters on the device)."""
    return {"cudnn_benchmark": cuda and not cfg.deterministic, "tf32_matmul": cuda and cfg.precision == "fp32",
            "fused_adamw": cuda}


def apply_backend_settings(settings: dict[str, bool]):
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    if settings["tf32_matmul"]:
        torch.set_float32_matmul_precision("high")


@dataclass
class Training:
    accelerator: object
    model: GZ2Model            # the plain module (what checkpoints hold)
    train_model: torch.nn.Module   # compiled and/or wrapped by Accelerate: what the step calls
    optimizer: torch.optim.Optimizer
    micro_batch: int           # per process and accumulation step
    image_dtype: torch.dtype   # what the loaders hand over: fp16 on a GPU for bf16, float32 otherwise
    loader_workers: int        # the loader's share of the cores (budget_cores)
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def check_model_name(name: str):
    """Refuses a name timm does not know, suggesting similar ones."""
    import timm
    if not timm.is_model(name):
        near = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        raise ConfigError(f"--model {name}: not a timm model" + (f" (similar: {', '.join(near)})" if near else "")
                          + "; `python -c 'import timm; print(timm.list_models())'` lists them")


def create_model(cfg: TrainConfig, tree=None) -> GZ2Model:
    from .model import GZ2Model
    check_model_name(cfg.model)
    return GZ2Model(cfg.model, cfg.head, tree)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    trackers = cfg.trackers()
    # project_dir: file-based trackers (tensorboard) write under the run folder, RUN/gzfast/
    return Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                       gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available(),
                       log_with=trackers or None, project_dir=cfg.out if trackers else None)


def prepared_model(cfg: TrainConfig, model_state: dict | None, notes: list[str], tree=None) -> GZ2Model:
    """The model on the CPU: created (one output per answer of `tree`), pretrained weights loaded, stages
    frozen, a checkpoint's weights restored. `notes` gets what was done."""
    from .model import freeze, load_pretrained
    model = create_model(cfg, tree)
    if cfg.pretrained:
        try:
            info = load_pretrained(model, cfg.pretrained)
        except UserError:  # load_pretrained's own one-line refusals name the file and what fits
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors, pickle and torch each raise their own kind
            raise ConfigError(f"--pretrained {cfg.pretrained}: cannot use it ({first_line(exc)}); "
                              f"give a timm state dict (.safetensors or .pth) of {cfg.model}") from None
        notes.append(info["summary"])
    else:
        notes.append("WARNING: no --pretrained weights given: training starts from RANDOM weights "
                     "(no model hub is used; pass a local timm state dict to fine-tune as the study did)")
    try:
        frozen = freeze(model, cfg.freeze_stages)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    notes.append(f"frozen: stem + {cfg.freeze_stages} stage(s) ({frozen:,} parameters); "
                 f"trainable {sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if model_state is not None:
        try:
            model.load_state_dict(model_state)
        except RuntimeError as exc:
            raise ConfigError(f"the checkpoint's weights do not fit {cfg.model} ({first_line(exc)})") from None
    return model


def build_training(cfg: TrainConfig, accelerator=None, model_state: dict | None = None,
                   optimizer_state: dict | None = None, tree=None) -> Training:
    """Seeds, creates the model (pretrained weights, freezing, channels-last) on the device, the AdamW
    groups and the Accelerator, compiles and prepares, then restores the optimizer's state when given.
    The notes say what was done."""
    from accelerate.utils import set_seed

    from .model import param_groups
    acc = accelerator or make_accelerator(cfg)
    world = acc.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by processes x grad-accum "
                          f"({world} x {cfg.grad_accum})")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(cfg.seed)
    notes = []
    model = prepared_model(cfg, model_state, notes, tree)
    cuda = acc.device.type == "cuda"
    torch_threads, loader_workers, why = budget_cores(cfg.loader, cfg.workers, cuda, world)
    if not cuda:
        torch.set_num_threads(torch_threads)
    notes.append(f"cores: {why}")
    settings = backend_settings(cfg, cuda)
    apply_backend_settings(settings)
    notes.append("backends: " + ", ".join(f"{k.replace('_', ' ')} {'on' if v else 'off'}" for k, v in settings.items()))
    model = model.to(acc.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay),
                                  fused=settings["fused_adamw"] or None)
    compiled = torch.compile(model) if cfg.compile == "on" else model
    train_model, optimizer = acc.prepare(compiled, optimizer)
    if optimizer_state is not None:
        # after prepare: Accelerate moves the whole optimizer state to the device when it wraps it, AdamW's
        # `step` counters too, and the foreach kernel then reads each one back with .item(), a host sync
        # per parameter per step (pytorch/pytorch#128208). Loaded now, torch keeps them where it wants them:
        # on the CPU, or on the device for the fused kernel, which reads them there.
        optimizer.load_state_dict(optimizer_state)
    image_dtype = torch.float16 if acc.device.type == "cuda" and cfg.precision == "bf16" else torch.float32
    return Training(acc, model, train_model, optimizer, cfg.batch_size // (world * cfg.grad_accum), image_dtype,
                    loader_workers, notes)
