"""The training config: one dataclass with the study's defaults (docs/design.md §1), from flags and/or a file.

Precedence: defaults < `--config FILE` (YAML or JSON, the same keys) < flags given on the command line.
Unknown keys and values of the wrong type are errors. `resolve()` fills the choices that depend on the
machine (loader, precision, compile, freezing, schedule, run folder) so that the saved config says what ran.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from shard_tools.errors import UserError, first_line  # noqa: F401 - first_line: re-exported
from shard_tools.layout import IMAGE_SIDE

from .curriculum import DEFAULT_SCHEDULE, ScheduleError, default_schedule, parse_schedule, total_epochs
from .loaders import LOADERS, geometry_problem
from .losses import LOSSES

# Keys that may differ between a run and its resumption without changing what it computes.
# Run control: how this invocation runs, not what it computes. Never saved (config.json, checkpoints).
RUN_CONTROL = {"resume", "force", "plot", "ceiling_probe", "verify_shards", "log_with"}
# Keys that may differ between a run and its resumption without changing what it computes (streaming from
# object storage, the pil loader's order depends on its worker count: the trainer checks that one itself).
RESUME_FREE = RUN_CONTROL | {"out", "log_every", "workers", "hw_decoder_load"}  # which decoder engine, not what


# What config.json records about the launch and the data (the trainer adds them: the process count, the
# decision tree, the image side, the command line, the code's commit): not settings, so a config file may carry them and they are ignored.
LAUNCH_FACTS = {"world_size", "per_process_batch", "data", "command", "commit"}

# --log-with: Accelerate's tracker name -> the package it needs (optional extras, pyproject `trackers`).
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message names the key, the value and what to do."""


def auto_loader(cuda: bool) -> tuple[str, str]:
    """The faster loader for this machine, and why (measured: benchmarks/results, README)."""
    if cuda:
        return "dali-gpu", "decodes and augments on the GPU, leaving the CPU free"
    return "pil", ("on a CPU it decodes at the output's DCT scale inside the training process, so every core "
                   "stays with the model (dali-cpu decodes at full size on threads of its own)")


@dataclass
class TrainConfig:
    shards: str = field(default="data/shards", metadata={"help": "packed set (make shards)"})
    out: str | None = field(default=None, metadata={"help": "run folder (default runs/<date-time>)"})
    curriculum: str | None = field(default=None, metadata={
        "help": f"curriculum schedule; the flag alone means {DEFAULT_SCHEDULE} (scaled to --epochs)"})
    model: str = field(default="convnext_small", metadata={"help": "timm model name"})
    epochs: int | None = field(default=None, metadata={"help": "epochs (default 20, or the schedule's)"})
    batch_size: int = field(default=512, metadata={"help": "global batch size (divided by the process count)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    image_size: int = field(default=224, metadata={"help": "model input side in px"})
    crop_size: int | None = field(default=None, metadata={
        "help": "centre crop in px, resized to --image-size (default: the central half of the packed images, 212 of 424 px)"})
    loader: str = field(default="auto", metadata={"help": "dali-gpu, dali-cpu or pil (auto: dali-gpu with CUDA, pil without)"})
    workers: int | None = field(default=None, metadata={
        "help": "loader threads/processes (default: the trainer's core budget, printed at start)"})
    hw_decoder_load: float = field(default=0.65, metadata={
        "help": "dali-gpu: share of the JPEGs given to the GPU's hardware JPEG decoder (DALI's default)"})
    precision: str = field(default="auto", metadata={"help": "bf16 or fp32 (auto: bf16 on GPU, fp32 on CPU)"})
    compile: str = field(default="auto", metadata={"help": "torch.compile: auto (on with CUDA), on, off"})
    freeze_stages: int | None = field(default=None, metadata={
        "help": "freeze stem + first K stages (default 2 with --pretrained, 0 from scratch)"})
    lr_backbone: float = field(default=1e-4, metadata={"help": "AdamW lr of the trained backbone"})
    lr_head: float = field(default=5e-4, metadata={"help": "AdamW lr of the head (norm + fc)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (not on norms/biases)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant (the study) or cosine"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear LR warm-up, in epochs"})
    loss: str = field(default="mse", metadata={
        "help": "mse (on vote fractions, the Kaggle metric) or dirichlet (Dirichlet-multinomial on vote counts; "
                "needs a set packed from counts)"})
    head: str = field(default="auto", metadata={
        "help": "sigmoid or tree (decision-tree constrained) for --loss mse; dirichlet for --loss dirichlet (auto: sigmoid, or dirichlet)"})
    pretrained: str | None = field(default=None, metadata={"help": "local timm state dict (.safetensors/.pth)"})
    zoom: float = field(default=0.0, metadata={"help": "train-time random zoom (relative crop jitter)"})
    shift: float = field(default=0.0, metadata={"help": "train-time random shift (relative to the crop)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its last checkpoint"})
    force: bool = field(default=False, metadata={"help": "with --resume: accept a changed config or manifest"})
    seed: int = field(default=0, metadata={"help": "seed of weights, data order and augmentation"})
    log_every: int = field(default=50, metadata={"help": "steps between host syncs / loss logs"})
    deterministic: bool = field(default=False, metadata={"help": "deterministic torch algorithms"})
    plot: bool = field(default=True, metadata={"help": "draw RUN/curves.png at the end"})
    verify_shards: str = field(default="quick", metadata={
        "help": "check the shards trained on at start: quick (sizes, counts, indexes) or full (also sha256)"})
    ceiling_probe: int = field(default=5, metadata={
        "help": "steps on synthetic tensors at start that measure the compute ceiling (undone; 0: off)"})
    log_with: str | None = field(default=None, metadata={
        "help": f"also log metrics to Accelerate trackers ({', '.join(TRACKERS)}; comma-separated); metrics.jsonl is always written"})

    def trackers(self) -> list[str]:
        return [t.strip() for t in (self.log_with or "").split(",") if t.strip()]

    # --- derived -----------------------------------------------------------------------------------
    def schedule_text(self) -> str:
        return self.curriculum if self.curriculum else f"all:{self.epochs}"

    def resolve(self, cuda: bool, source_side: int = IMAGE_SIDE) -> TrainConfig:
        """Machine-dependent defaults filled in, then every value checked (the crop against images of
        `source_side` px, the packed set's)."""
        c = dataclasses.replace(self)
        if c.curriculum is not None and not c.curriculum.strip():
            raise ConfigError("--curriculum '': an empty schedule; give one (e.g. high:4,high+medium:4,all:12), "
                              "--curriculum alone for the default, or leave it out for plain training")
        if c.curriculum == "default":
            if (c.epochs or 20) < 3:
                raise ConfigError(f"--curriculum alone needs at least 3 epochs (one per stage), got --epochs {c.epochs}; "
                                  f"give a schedule such as high:1,all:{max(c.epochs - 1, 1)} or train plain")
            c.curriculum = default_schedule(c.epochs or 20)
        elif c.curriculum:
            try:
                n = total_epochs(parse_schedule(c.curriculum))
            except ScheduleError as exc:
                raise ConfigError(f"curriculum: {exc}") from None
            if c.epochs is not None and c.epochs != n:
                raise ConfigError(f"--epochs {c.epochs} conflicts with the schedule {c.curriculum!r} ({n} epochs); "
                                  f"drop --epochs or change the schedule")
            c.epochs = n
        c.epochs = c.epochs if c.epochs is not None else 20
        if c.loader == "auto":
            c.loader = auto_loader(cuda)[0]
        if c.precision == "auto":
            c.precision = "bf16" if cuda else "fp32"
        if c.compile == "auto":
            c.compile = "on" if cuda else "off"
        if c.head == "auto":
            c.head = "dirichlet" if c.loss == "dirichlet" else "sigmoid"
        if c.freeze_stages is None:
            c.freeze_stages = 2 if c.pretrained else 0
        if c.out is None:
            c.out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        if c.crop_size is None:  # the study's 212 of 424 px, on a set packed at any side
            c.crop_size = source_side // 2
        c.check(source_side)
        return c

    def check(self, source_side: int = IMAGE_SIDE):
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        need(self.loader in LOADERS, f"loader {self.loader!r}: choose one of {', '.join(LOADERS)}")
        need(self.precision in ("bf16", "fp32"), f"precision {self.precision!r}: bf16 or fp32")
        need(self.compile in ("on", "off"), f"compile {self.compile!r}: auto, on or off")
        need(self.loss in LOSSES, f"loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        fits = ("dirichlet",) if self.loss == "dirichlet" else ("sigmoid", "tree")
        need(self.head in fits, f"head {self.head!r}: with --loss {self.loss} choose {' or '.join(fits)}")
        need(self.lr_schedule in ("constant", "cosine"), f"lr_schedule {self.lr_schedule!r}: constant or cosine")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        need(self.image_size >= 16, f"image_size {self.image_size} must be >= 16")
        problem = geometry_problem(self.crop_size, self.zoom, self.shift, True, source_side)
        need(problem is None, problem)
        need(self.verify_shards in ("quick", "full"), f"verify_shards {self.verify_shards!r}: quick or full")
        for key in ("lr_backbone", "lr_head", "weight_decay", "warmup_epochs", "zoom", "shift"):
            value = getattr(self, key)
            need(math.isfinite(value) and value >= 0, f"{key} {value!r}: must be a finite number >= 0")
        need(0 <= self.seed < 2**32, f"seed {self.seed}: must be in 0..{2**32 - 1} (numpy's seed range)")
        need(0 <= self.zoom < 0.5 and 0 <= self.shift < 0.25, "zoom must be in [0, 0.5), shift in [0, 0.25)")
        need(self.log_every >= 1, "log_every must be >= 1")
        need(self.workers is None or self.workers >= 0, f"workers {self.workers} must be >= 0")
        need(0 <= self.hw_decoder_load <= 1, f"hw_decoder_load {self.hw_decoder_load} must be in [0, 1]")
        need(self.ceiling_probe >= 0, "ceiling_probe must be >= 0")
        need(not self.force or self.resume, "--force only makes sense with --resume")
        need(self.freeze_stages is None or self.freeze_stages >= 0, "freeze_stages must be >= 0")
        for tracker in self.trackers():
            need(tracker in TRACKERS, f"--log-with {tracker}: choose from {', '.join(TRACKERS)}")
            # checked before the Accelerator exists: Accelerate itself would only warn and log nothing
            need(importlib.util.find_spec(TRACKERS[tracker]) is not None,
                 f"--log-with {tracker} needs the {TRACKERS[tracker]} package (pip install {TRACKERS[tracker]})")
        try:
            parse_schedule(self.schedule_text(), self.epochs)
        except ScheduleError as exc:
            raise ConfigError(f"curriculum: {exc}") from None

    def to_dict(self) -> dict:
        """What the run computes from (run-control keys left out): config.json and every checkpoint."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_CONTROL}


def _field_type(f) -> type:
    hints = typing.get_type_hints(TrainConfig)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


# str settings whose values are on/off: YAML 1.1 reads a bare `off` as false and `on` as true.
ON_OFF = {"compile"}


def _coerce(name: str, value, typ):
    key = name.rpartition(": ")[2].replace("-", "_")
    if value is None:
        return None
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as text
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected float, got str {value!r}") from None
    if typ is str and isinstance(value, bool) and key in ON_OFF:
        return "on" if value else "off"
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{name}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_mapping(data: dict, source: str) -> dict:
    """Checked values of a config file (keys may use - or _)."""
    known = {f.name: f for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in LAUNCH_FACTS:  # a run's config.json given back as --config: the launch decides these
            continue
        if name not in known:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        out[name] = _coerce(f"{source}: {key}", value, _field_type(known[name]))
    return out


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml, json and decoding each raise their own kind
        raise ConfigError(f"--config {path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} "
                          f"({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return from_mapping(data, str(path))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gzfast/train.py", description="Train a GZ2 ConvNeXt on packed shards.",
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("--config", help="YAML or JSON file with the same keys as the flags")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        # a help text that states its default (a machine- or schedule-dependent one) is not given a second
        help_ = text if "default" in text else f"{text} (default: {f.default})"
        typ = _field_type(f)
        if f.name == "curriculum":
            ap.add_argument(flag, nargs="?", const="default", metavar="SCHEDULE", help=help_)
        elif typ is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
        else:
            ap.add_argument(flag, type=typ, help=help_, metavar=f.name.upper())
    return ap


def explicit_values(argv=None) -> dict:
    """The values the user set: a config file's keys, then the flags given on top (not the defaults)."""
    args = vars(build_parser().parse_args(argv))
    values = load_file(args.pop("config")) if "config" in args else {}
    values.update(from_mapping(args, "command line"))
    return values


def config_from_dict(data: dict) -> TrainConfig:
    return TrainConfig(**from_mapping(data, "config"))
