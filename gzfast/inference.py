"""A trained run, ready to predict: its config and checkpoint, the model built as trained, and the one
prediction loop that `gzfast.predict` and `gzfast.evaluate` share.

The model is rebuilt from the run's config (`RUN/config.json`, else the checkpoint's copy) and gets the
checkpoint's weights; a checkpoint of another model is refused by name, not by a state-dict traceback.
On a GPU it runs bf16 under autocast and compiled (the loaders then hand over fp16, DESIGN §3); on the
CPU fp32, eager. Batches have one shape (the loaders pad the last one) and predictions stay on the device
until one copy at the end, as in the trainer's validation.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from shard_tools.errors import UserError

from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, config_from_dict
from .eval_loop import Prediction, predict_batches
from .tta import check_views, predict_views


class InferenceError(UserError, RuntimeError):
    """A run, checkpoint or input that prediction cannot use; the message says what to do."""


@dataclass
class LoadedRun:
    run: Path
    checkpoint: Path
    cfg: TrainConfig
    model: torch.nn.Module   # eval mode, on the device, channels-last
    epoch: int | None        # epochs completed when the checkpoint was written


def checkpoint_path(run: Path, which: str) -> Path:
    """`best`, `last` or a path; missing files are errors that say what exists."""
    if which in ("best", "last"):
        path = run / "checkpoints" / (ckpt.BEST if which == "best" else ckpt.LAST)
        if not path.is_file():
            have = sorted(p.name for p in (run / "checkpoints").glob("*.pt")) if (run / "checkpoints").is_dir() else []
            hint = (f"it has {', '.join(have)}: pass --checkpoint {Path(have[0]).stem}" if have else
                    "it holds no checkpoint yet (train it first, or pass --checkpoint PATH)")
            raise InferenceError(f"{path}: no {which} checkpoint in the run folder; {hint}")
        return path
    path = Path(which)
    if not path.is_file():
        raise InferenceError(f"--checkpoint {which}: file not found; pass best, last or the path of a .pt file")
    return path


def run_config(run: Path, state: dict, checkpoint: Path) -> TrainConfig:
    """The run's config (RUN/config.json, else the checkpoint's); the checkpoint must be of the same model."""
    saved = state.get("config")
    path = run / "config.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else saved
        if data is None:
            raise InferenceError(f"{run}: no config.json and {checkpoint} holds no config; is it a gzfast run?")
        cfg = config_from_dict(data)
    except (json.JSONDecodeError, ConfigError) as exc:
        raise InferenceError(f"{path}: unreadable run config ({exc})") from None
    if isinstance(saved, dict):
        theirs = (saved.get("model"), saved.get("head"))
        if theirs != (cfg.model, cfg.head):
            raise InferenceError(f"{checkpoint}: a checkpoint of another model ({theirs[0]}, {theirs[1]} head) than the "
                                 f"run {run} trained ({cfg.model}, {cfg.head} head); pass a checkpoint of this run")
    return cfg


def load_run(run: str | Path, which: str = "best", device: torch.device | None = None) -> LoadedRun:
    from .model import GZ2Model  # timm: imported only once a run is really loaded

    run = Path(run)
    if not run.is_dir():
        raise InferenceError(f"--run {run}: no such run folder; pass the --out folder of a training run "
                             f"(runs/<date-time>/)")
    path = checkpoint_path(run, which)
    try:
        state = ckpt.load(path)
    except Exception as exc:  # torch.load raises many kinds of error on a file that is not a checkpoint
        raise InferenceError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise InferenceError(f"{path}: not a gzfast checkpoint (no model state dict in it)")
    cfg = run_config(run, state, path)
    model = GZ2Model(cfg.model, cfg.head)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InferenceError(f"{path}: its weights do not fit the run's model {cfg.model} ({cfg.head} head): "
                             f"{first}; is it a checkpoint of another model?") from None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    return LoadedRun(run, path, cfg, model, state.get("epoch"))


class Predictor:
    """The model of a loaded run on its device: bf16 + compile on a GPU (unless told otherwise), K views."""

    def __init__(self, loaded: LoadedRun, views: int = 8, precision: str = "auto", compile: str = "auto"):
        self.loaded = loaded
        self.views = check_views(views)
        self.device = next(loaded.model.parameters()).device
        cuda = self.device.type == "cuda"
        self.precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
        if self.precision == "bf16" and not cuda:
            raise InferenceError("--precision bf16 needs a CUDA GPU; on the CPU the model runs fp32")
        use_compile = cuda if compile == "auto" else compile == "on"
        self.compiled = use_compile
        self.model = torch.compile(loaded.model) if use_compile else loaded.model

    @property
    def image_dtype(self) -> torch.dtype:
        """What the loaders should hand over: fp16 on a GPU for bf16 (DALI has no bf16), float32 otherwise."""
        return torch.float16 if self.precision == "bf16" else torch.float32

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run(self, batches, desc: str = "predict") -> Prediction:
        """Predicts every real row of `batches` (an iterable of loaders.Batch, padded rows dropped), as the
        mean over the K views."""
        return predict_batches(lambda images: predict_views(self.model, images, self.views), batches, self._autocast,
                               self.device, 37, desc)


def speed_line(pred: Prediction, views: int) -> str:
    """`N galaxies x K views in T s: R galaxies/s (S after the first batch)`: what a person wants to read."""
    n = len(pred.ids)
    rate = n / max(pred.seconds, 1e-9)
    steady = f"; {pred.steady_per_s:,.0f}/s after the first batch" if pred.steady_per_s else ""
    return (f"{n:,} galaxies x {views} view(s) in {pred.seconds:.1f} s: {rate:,.0f} galaxies/s "
            f"({rate * views:,.0f} model images/s{steady})")
