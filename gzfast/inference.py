"""A trained run, ready to predict: its checkpoint, the model built as trained, and the one model call
that predict, embed and evaluate share.

The checkpoint is the authority: it holds the config the weights were trained with (`state["config"]`),
the data facts (`state["data"]`: the decision tree, the image side and fit, whether the set had vote
counts; a checkpoint without them is a gz2-kaggle run at 424 px) and the data's fingerprint. The model is
built from those, never from `RUN/config.json`. That file must agree with the checkpoint on everything
that is not run control (`config.RESUME_FREE`): a checkpoint of another model is refused by name; any
other difference (an edited config.json, a checkpoint of another run) is refused unless `--force`, and
then the checkpoint's config is used. On a GPU the model runs bf16 under autocast and compiled (the
loaders then hand over fp16); on the CPU fp32, eager.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from shard_tools.errors import UserError, first_line
from shard_tools.trees import Tree

from . import checkpoint as ckpt
from .config import LAUNCH_FACTS, RESUME_FREE, ConfigError, TrainConfig, config_from_dict
from .data_facts import DataFacts
from .eval_loop import Prediction, predict_batches
from .loaders import geometry_problem
from .tta import check_views, predict_views


class InferenceError(UserError, RuntimeError):
    """A run, checkpoint or input that prediction cannot use; the message says what to do."""


@dataclass
class LoadedRun:
    run: Path
    checkpoint: Path
    cfg: TrainConfig         # the checkpoint's config: what the weights were trained with
    model: torch.nn.Module   # eval mode, on the device, channels-last
    epoch: int | None        # epochs completed when the checkpoint was written
    data: DataFacts
    data_fingerprint: str | None
    digest: str              # of the checkpoint file: which weights an output was computed from

    @property
    def tree(self) -> Tree:
        return self.data.tree


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


def _what_computes(config: dict) -> dict:
    """A config's keys that change what a model computes (run control and launch facts left out)."""
    return {k: v for k, v in config.items() if k not in RESUME_FREE and k not in LAUNCH_FACTS and k != "shards"}


def run_config(run: Path, state: dict, checkpoint: Path, force: bool = False) -> TrainConfig:
    """The checkpoint's config, checked against RUN/config.json (see the module's doc)."""
    saved = state.get("config")
    path = run / "config.json"
    try:
        on_disk = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{path}: unreadable run config ({exc})") from None
    if not isinstance(saved, dict):
        saved = on_disk  # a checkpoint written before checkpoints carried their config
    if not isinstance(saved, dict):
        raise InferenceError(f"{run}: no config.json and {checkpoint} holds no config; is it a gzfast run?")
    try:
        cfg = config_from_dict(saved)
    except ConfigError as exc:
        raise InferenceError(f"{checkpoint}: unreadable config in the checkpoint ({exc})") from None
    if isinstance(on_disk, dict):
        theirs = (on_disk.get("model"), on_disk.get("head"))
        if theirs != (cfg.model, cfg.head):
            raise InferenceError(f"{checkpoint}: a checkpoint of another model ({cfg.model}, {cfg.head} head) than the "
                                 f"run {run} trained ({theirs[0]}, {theirs[1]} head); pass a checkpoint of this run")
        a, b = _what_computes(saved), _what_computes(on_disk)
        facts = (state.get("data"), on_disk.get("data"))
        changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if None not in facts and facts[0] != facts[1]:
            changed.append("data")
        if changed and not force:
            shown = ", ".join(f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} in config.json" for k in changed[:3]
                              if k != "data") or "the data facts (tree, image side) differ"
            raise InferenceError(f"{checkpoint}: its config differs from {path} ({shown}); it is another run's "
                                 f"checkpoint or config.json was edited: pass a checkpoint of this run, or --force to "
                                 f"use the checkpoint's own config")
    return cfg


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def load_run(run: str | Path, which: str = "best", device: torch.device | None = None, force: bool = False) -> LoadedRun:
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
    cfg = run_config(run, state, path, force)
    data = DataFacts.from_record(state.get("data"), str(path))
    problem = geometry_problem(cfg.crop_size, 0.0, 0.0, False, data.image_side)
    if problem or not 1 <= cfg.image_size <= 4096:
        raise InferenceError(f"{path}: the run's geometry cannot be used ({problem or f'image_size {cfg.image_size}'})")
    model = GZ2Model(cfg.model, cfg.head, data.tree)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InferenceError(f"{path}: its weights do not fit the run's model {cfg.model} ({cfg.head} head, "
                             f"{data.tree.n} answers): {first_line(exc)}; is it a checkpoint of another model?") from None
    return LoadedRun(run, path, cfg, for_inference(model, device), state.get("epoch"), data, state.get("data_fingerprint"),
                     file_digest(path))


def for_inference(model: torch.nn.Module, device: torch.device | None) -> torch.nn.Module:
    """The model in eval mode, channels-last, on `device` (default: the GPU when there is one)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device, memory_format=torch.channels_last).eval()


def pooled_features(model, images: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled features (timm: `forward_features`, then `forward_head(pre_logits=True)`)."""
    backbone = model.backbone
    return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def feature_size(model) -> int:
    return int(model.backbone.num_features)


class Predictor:
    """The model of a loaded run on its device: bf16 + compile on a GPU (unless told otherwise), K views.
    `what` is "outputs" (the head's: fractions, or Dirichlet concentrations) or "features" (embed)."""

    def __init__(self, loaded: LoadedRun, views: int = 8, precision: str = "auto", compile: str = "auto",
                 what: str = "outputs"):
        self.loaded = loaded
        self.views = check_views(views)
        self.device = next(loaded.model.parameters()).device
        cuda = self.device.type == "cuda"
        self.precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
        if self.precision == "bf16" and not cuda:
            raise InferenceError("--precision bf16 needs a CUDA GPU; on the CPU the model runs fp32")
        use_compile = cuda if compile == "auto" else compile == "on"
        self.compiled = use_compile
        model = loaded.model
        if what == "features":
            self.width = feature_size(model)
            call = lambda images: pooled_features(model, images)  # noqa: E731 - one line of glue
        else:
            self.width, call = loaded.tree.n, model
        self.forward = torch.compile(call) if use_compile else call

    @property
    def image_dtype(self) -> torch.dtype:
        """What the loaders should hand over: fp16 on a GPU for bf16 (DALI has no bf16), float32 otherwise."""
        return torch.float16 if self.precision == "bf16" else torch.float32

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run(self, batches, desc: str | None = "predict", progress=None) -> Prediction:
        """Every real row of `batches` (an iterable of loaders.Batch, padded rows dropped), as the mean over
        the K views of the head's outputs (or the features); `progress(n)` is told of each batch's rows."""
        try:
            return predict_batches(lambda images: predict_views(self.forward, images, self.views), batches,
                                   self._autocast, self.device, self.width, desc, progress)
        except RuntimeError as exc:  # the CPU allocator says so in a RuntimeError, not an OutOfMemoryError
            if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
                raise InferenceError("out of memory running the model; lower --batch-size") from None
            raise

    def fractions(self, outputs: torch.Tensor):
        """Cumulative fractions from the (view-averaged) head outputs."""
        return self.loaded.model.fractions(outputs)


def speed_line(n: int, seconds: float, views: int, steady_per_s: float | None = None) -> str:
    """`N galaxies x K views in T s: R galaxies/s (S after the first batch)`: what a person wants to read."""
    rate = n / max(seconds, 1e-9)

    def per_s(r: float) -> str:
        return f"{r:,.0f}" if r >= 10 else f"{r:.2g}"
    steady = f"; {per_s(steady_per_s)}/s after the first batch" if steady_per_s else ""
    return (f"{n:,} galaxies x {views} view(s) in {seconds:.1f} s: {per_s(rate)} galaxies/s "
            f"({per_s(rate * views)} model images/s{steady})")
