"""Train a GZ2 ConvNeXt on packed shards: `[accelerate launch] gzfast/train.py [--curriculum [SCHEDULE]] ...`.

The study's settings are the defaults (DESIGN §1); a curriculum stage is just another shard list. The
training step sees only (images, labels) already on the device; which loader made them is not its
business. Host syncs happen only every `log_every` steps (loss logging, NaN check, stop requests) and at
epoch ends. The next epoch's loader is built in the background while the current epoch ends and
validation runs; the validation loader is built once and reused.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch gzfast/train.py): make `gzfast` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gzfast import ceiling
from gzfast import checkpoint as ckpt
from gzfast.build import Training, build_training, make_accelerator
from gzfast.config import RESUME_FREE, ConfigError, TrainConfig, auto_loader, config_from_dict, explicit_values, first_line
from gzfast.curriculum import ScheduleError, check_schedule, parse_schedule, shards_for_epoch, stage_at
from gzfast.loaders import LoaderError, make_loader
from gzfast.loaders.labels import read_labels
from gzfast.metrics import evaluation_report, rmse
from shard_tools.layout import LayoutError, PackedSet, is_remote

# Fields of metrics.jsonl that measure time; everything else is reproducible given the seed.
TIMING_KEYS = {"time", "epoch_time", "data_wait", "first_batch_wait", "compute_time", "eval_time", "images_per_s",
               "ceiling_images_per_s", "of_ceiling"}


TRACKER_PROJECT = "gzfast"  # the project (mlflow experiment, wandb project) and tensorboard's folder in RUN


def tracker_values(record: dict) -> dict:
    """A metrics.jsonl record as tracker scalars: `kind/field` for every number, nested dicts (per
    question, per tier) flattened to `kind/field/key`; text fields (the stage name) are left out, the
    epoch record's `stage_index` says the same."""
    out = {}

    def add(key, value):
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{key}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value

    for k, v in record.items():
        if k != "kind":
            add(f"{record['kind']}/{k}", v)
    return out


def tracker_config(cfg: TrainConfig) -> dict:
    """The config as hyperparameters: tensorboard's hparams take only numbers, text and booleans."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()}


class TrainingStopped(Exception):
    """Training cannot go on (diverged loss); the message says where and why."""


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def training_step(model, optimizer, accelerator, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One (micro-)step: forward under autocast, MSE, backward, and the optimizer step when the
    accumulation window closes. Returns the loss, still on the device (no host sync)."""
    with accelerator.accumulate(model):
        with accelerator.autocast():
            pred = model(images)
        loss = mse(pred, labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def resolve_config(argv, cuda: bool) -> tuple[TrainConfig, dict | None, list[str]]:
    """The config of this run, with --resume the checkpoint to continue from, and notes on the choices
    made for this machine."""
    values = explicit_values(argv)
    notes = [f"loader auto -> {auto_loader(cuda)[0]}: {auto_loader(cuda)[1]}"] if values.get("loader", "auto") == "auto" else []
    if not values.get("resume"):
        cfg = TrainConfig(**values).resolve(cuda)
        check_new_run_folder(Path(cfg.out))
        return cfg, None, notes
    if not values.get("out"):
        raise ConfigError("--resume needs --out RUN (the run folder to continue)")
    last = Path(values["out"]) / "checkpoints" / ckpt.LAST
    if not last.exists():
        raise ConfigError(f"--resume: nothing to resume, {last} does not exist")
    try:
        state = ckpt.load(last)
        saved = state["config"]
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        raise ConfigError(f"--resume: {last} is not a readable gzfast checkpoint ({first_line(exc)}); "
                          f"start a new run with another --out") from None
    wanted = config_from_dict({**saved, **values}).resolve(cuda)
    changed = {k: (saved[k], v) for k, v in wanted.to_dict().items() if k not in RESUME_FREE and saved.get(k) != v}
    if changed and not wanted.force:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"--resume refused: the config differs from the checkpoint's ({lines}); "
                          f"pass --force to continue anyway")
    return wanted, state, []


def check_new_run_folder(out: Path):
    """A new run writes into a new or empty folder: nothing the project did not write is overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()):
        what = "a run" if (out / "checkpoints" / ckpt.LAST).exists() else "files"
        raise ConfigError(f"--out {out} already holds {what}; pick a new or empty --out"
                          + (", or continue that run with --resume" if what == "a run" else ""))


def next_batch(it, loader):
    """The next batch; a loader that ends before its len() is a LoaderError, not a bare StopIteration."""
    try:
        return next(it)
    except StopIteration:
        raise LoaderError(f"the loader ran out before its {len(loader)} batches; its shards hold fewer samples "
                          f"than their indexes say") from None


@dataclass
class EpochStats:
    """Running sums of the epoch in progress; mid-epoch checkpoints carry them, so a resumed epoch
    reports what an uninterrupted one would."""
    loss_sum: float = 0.0
    loss_count: int = 0
    window_sum: float = 0.0      # loss since the last log point
    window_count: int = 0
    window_start: int = 0        # step of the last log point
    data_wait: float = 0.0       # host time blocked on the loader
    first_batch_wait: float = 0.0  # of that, the wait for the epoch's first batch (what an epoch boundary costs)
    train_time: float = 0.0
    samples: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> EpochStats:
        return cls(**state)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume_state: dict | None = None, notes: list[str] = ()):
        self.cfg = cfg
        self.notes = list(notes)
        acc = make_accelerator(cfg)
        self.accelerator = acc
        self.is_main = acc.is_main_process
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.data = PackedSet.open(cfg.shards)
        self.schedule = parse_schedule(cfg.schedule_text(), cfg.epochs)
        check_schedule(self.data, self.schedule)
        self.val_paths = self.data.paths("val")
        if not self.val_paths:
            raise ConfigError(f"{cfg.shards} has no validation shards; pack it with --val-fraction > 0")
        problems = self.data.problems(self.data.select("train") + self.data.select("val"), full=cfg.verify_shards == "full")
        if problems:
            raise LayoutError(f"{len(problems)} problem(s) in the shards of {cfg.shards}, first: {problems[0]}; "
                              f"`python -m shard_tools verify {cfg.shards}` lists them, re-running pack repairs them")
        self.high, self.low = self.data.thresholds["high"], self.data.thresholds["low"]
        if resume_state is not None and resume_state["data_fingerprint"] != self.data.fingerprint and not cfg.force:
            raise ConfigError(f"--resume refused: the shards in {cfg.shards} differ from the ones this run "
                              f"was trained on (manifest changed); pass --force to continue anyway")
        world = resume_state.get("world_size", 1) if resume_state is not None else acc.num_processes
        if world != acc.num_processes and not cfg.force:
            # each rank's slice of the data depends on the process count: another count is another run
            raise ConfigError(f"--resume refused: the run was trained by {world} process(es), this launch has "
                              f"{acc.num_processes}; launch {world} (accelerate launch --num_processes {world}) or pass --force")
        resume = resume_state or {}
        self.t: Training = build_training(cfg, acc, resume.get("model"), resume.get("optimizer"))
        was = resume.get("loader_workers", self.t.loader_workers)
        # streamed from object storage, the pil loader's order depends on its worker count (local: it does not)
        if cfg.loader == "pil" and is_remote(cfg.shards) and was != self.t.loader_workers and not cfg.force:
            raise ConfigError(f"--resume refused: the pil loader's sample order depends on its worker count, which "
                              f"was {was} and is {self.t.loader_workers} here; pass --workers {was}, or --force")
        # from the config, not the optimizer: a resumed optimizer's groups hold the last scheduled LR
        self.base_lrs = [cfg.lr_head if g["name"].startswith("head") else cfg.lr_backbone
                         for g in self.t.optimizer.param_groups]
        self.epoch, self.step_in_epoch = resume.get("epoch", 0), resume.get("step", 0)
        self.global_step, self.best_rmse = resume.get("global_step", 0), resume.get("best_rmse", math.inf)
        self.stats = self._resumed_stats(resume) if resume else EpochStats()
        if resume:
            self._truncate_metrics(resume["metrics_lines"])
            ckpt.set_rng_state(resume["rng"])
        self.stop_signal = None
        self.tracking = False  # trackers started (fit)
        self.start_time = time.time() - resume.get("elapsed", 0.0)
        self.metrics_lines = self._count_metrics_lines()
        self.val_loader = None
        self.ceiling = None  # images/s of the step on synthetic tensors (measure_ceiling)
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-epoch-loader")
        self.next_loader = None  # (epoch, future of its prepared loader)

    # --- bookkeeping ---------------------------------------------------------------------------------
    def _resumed_stats(self, resume: dict) -> EpochStats:
        """This rank's running sums of the interrupted epoch (each rank summed its own losses)."""
        per_rank = resume.get("epoch_stats_per_rank")
        if per_rank and len(per_rank) == self.accelerator.num_processes:
            return EpochStats.from_state(per_rank[self.accelerator.process_index])
        return EpochStats.from_state(resume["epoch_stats"])

    def _count_metrics_lines(self) -> int:
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path) as f:
            return sum(1 for _ in f)

    def _truncate_metrics(self, keep: int):
        """Drops what was logged after the checkpoint: the resumed run logs it again."""
        if self.is_main and self.metrics_path.exists():
            lines = self.metrics_path.read_text().splitlines(keepends=True)[:keep]
            self.metrics_path.write_text("".join(lines))

    def log(self, record: dict):
        if not self.is_main:
            return
        record = {**record, "time": round(time.time() - self.start_time, 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.metrics_lines += 1
        if self.tracking:  # the same fields, to the trackers; metrics.jsonl stays the source of truth
            self.accelerator.log(tracker_values(record), step=self.global_step)

    def lr_factor(self, epoch_progress: float) -> float:
        """Multiplier of the base LRs at a fractional epoch (warm-up, then constant or cosine)."""
        cfg = self.cfg
        if cfg.warmup_epochs and epoch_progress < cfg.warmup_epochs:
            return (epoch_progress + 1e-9) / cfg.warmup_epochs
        if cfg.lr_schedule == "cosine":
            span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch_progress - cfg.warmup_epochs) / span)))
        return 1.0

    def save_checkpoint(self, epoch: int, step: int, best: bool = False):
        """Saves where the run stands: `epoch` and `step` are the next batch to train; `best` also
        copies it to best.pt."""
        acc = self.accelerator
        acc.wait_for_everyone()
        per_rank = [self.stats.state_dict()]
        if acc.num_processes > 1:  # every rank's own loss sums, so a resumed epoch reduces what an unbroken one does
            from accelerate.utils import gather_object
            per_rank = gather_object(per_rank)
        if not self.is_main:
            return
        state = {"config": self.cfg.to_dict(), "data_fingerprint": self.data.fingerprint,
                 "model": self.t.model.state_dict(), "optimizer": self.t.optimizer.state_dict(),
                 "epoch": epoch, "step": step, "global_step": self.global_step, "best_rmse": self.best_rmse,
                 "epoch_stats": self.stats.state_dict(), "epoch_stats_per_rank": per_rank,
                 "world_size": acc.num_processes, "rng": ckpt.rng_state(), "loader_workers": self.t.loader_workers,
                 "metrics_lines": self.metrics_lines, "elapsed": time.time() - self.start_time}
        ckpt.atomic_save(state, self.ckpt_dir / ckpt.LAST)
        if best:
            ckpt.atomic_copy(self.ckpt_dir / ckpt.LAST, self.ckpt_dir / ckpt.BEST)

    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.is_main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step, then exiting "
                  f"(again to abort without saving)", file=sys.stderr, flush=True)

    def _stop_requested(self, at_sync_point: bool) -> bool:
        """All processes agree on stopping, at log points only when there are several (no extra syncs): a
        signal to any one rank stops every rank after the same step. A rank that got no signal itself
        takes the signal's number, for its exit status."""
        if self.accelerator.num_processes == 1:
            return self.stop_signal is not None
        if not at_sync_point:
            return False
        flag = torch.tensor([float(self.stop_signal or 0)], device=self.accelerator.device)
        signum = int(self.accelerator.reduce(flag, "max").item())
        if signum and self.stop_signal is None:
            self.stop_signal = signum
        return bool(signum)

    # --- loaders -------------------------------------------------------------------------------------
    def _loader_args(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        return dict(batch_size=self.t.micro_batch, image_size=cfg.image_size, crop_size=cfg.crop_size,
                    rank=acc.process_index, world_size=acc.num_processes, seed=cfg.seed, workers=self.t.loader_workers,
                    device=acc.device, dtype=self.t.image_dtype)

    def _train_loader(self, epoch: int):
        cfg = self.cfg
        return make_loader(cfg.loader, shards_for_epoch(self.data, self.schedule, epoch), train=True, epoch=epoch,
                           zoom=cfg.zoom, shift=cfg.shift, **self._loader_args())

    def _prepared_train_loader(self, epoch: int):
        """Epoch `epoch`'s loader: the one built in the background during the previous epoch, if any."""
        if self.next_loader is not None and self.next_loader[0] == epoch:
            future, self.next_loader = self.next_loader[1], None
            return future.result()
        return self._train_loader(epoch)

    def _prepare_next_epoch(self, epoch: int):
        def build():
            # a new thread starts on cuda:0: give it this process's device
            cuda = self.accelerator.device.type == "cuda"
            with torch.cuda.device(self.accelerator.device) if cuda else contextlib.nullcontext():
                loader = self._train_loader(epoch)
                prepare = getattr(loader, "prepare", None)  # optional: a loader that builds lazily has none
                return prepare() if prepare else loader

        if epoch < self.cfg.epochs:
            self.next_loader = (epoch, self.prefetch.submit(build))

    # --- training ------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> bool:
        """One epoch from `self.step_in_epoch`. Returns False if stopped by a signal (checkpoint saved)."""
        stage_index, stage = stage_at(self.schedule, epoch)
        t0 = time.perf_counter()
        loader = self._prepared_train_loader(epoch)
        if not self.run_steps(epoch, loader, stage.name, t0):
            return False
        self._prepare_next_epoch(epoch + 1)  # built while validation runs
        self.end_epoch(epoch, stage_index, stage.name)
        return True

    def run_steps(self, epoch: int, loader, stage_name: str, t_start: float) -> bool:
        """The step loop of one epoch, from `self.step_in_epoch` to the end of `loader`."""
        cfg, acc, st = self.cfg, self.accelerator, self.stats
        n_batches = len(loader)
        device_sums = torch.tensor([st.loss_sum, st.window_sum], device=acc.device, dtype=torch.float64)
        bar = tqdm(total=n_batches, initial=self.step_in_epoch, disable=None if self.is_main else True, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs} [{stage_name}]", unit="batch", dynamic_ncols=True)
        self.t.train_model.train()
        it = iter(loader)
        for _ in range(self.step_in_epoch):  # resumed mid-epoch: the same stream, skipped to where it stopped
            next_batch(it, loader)
        step = self.step_in_epoch
        while step < n_batches:
            t0 = time.perf_counter()
            batch = next_batch(it, loader)
            waited = time.perf_counter() - (t_start if step == self.step_in_epoch else t0)
            st.data_wait += waited
            if step == self.step_in_epoch:
                st.first_batch_wait += waited
            for g, base in zip(self.t.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * self.lr_factor(epoch + step / n_batches)
            loss = training_step(self.t.train_model, self.t.optimizer, acc, batch.images, batch.labels)
            device_sums += loss
            st.loss_count += 1
            st.window_count += 1
            st.samples += len(batch) * acc.num_processes
            step += 1
            self.global_step += 1
            bar.update(1)
            at_log = step % cfg.log_every == 0 or step == n_batches
            if at_log:
                self._log_window(epoch, step, stage_name, device_sums, bar)
            if step < n_batches and self._stop_requested(at_log):
                self._close_stats(device_sums, t_start)
                self.step_in_epoch = step
                self.save_checkpoint(epoch, step)
                bar.close()
                return False
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        self._close_stats(device_sums, t_start)
        bar.close()
        return True

    def _close_stats(self, device_sums: torch.Tensor, t_start: float):
        self.stats.train_time += time.perf_counter() - t_start
        self.stats.loss_sum, self.stats.window_sum = device_sums.tolist()

    def _log_window(self, epoch: int, step: int, stage_name: str, device_sums: torch.Tensor, bar):
        """A log point (the only host sync of the loop): the window's mean loss, checked for NaN/inf."""
        st = self.stats
        # the mean over all ranks (they run the same number of steps), so every rank sees a NaN on any one
        window = self.accelerator.reduce(device_sums[1:2].clone(), "mean").item() / st.window_count
        if not math.isfinite(window):
            bar.close()
            last = self.ckpt_dir / ckpt.LAST
            raise TrainingStopped(
                f"loss became {window} in steps {st.window_start + 1}-{step} of epoch {epoch + 1} "
                f"(global step {self.global_step}); stopping. The last good checkpoint is "
                f"{last if last.exists() else 'not written yet'}; try a lower --lr-backbone/--lr-head or --precision fp32")
        self.log({"kind": "step", "epoch": epoch + 1, "step": step, "global_step": self.global_step,
                  "stage": stage_name, "loss": window, "lr_backbone": self.lr_of("backbone")})
        bar.set_postfix(loss=f"{window:.5f}")
        device_sums[1].zero_()
        st.window_count, st.window_start = 0, step

    def end_epoch(self, epoch: int, stage_index: int, stage_name: str):
        """Validation, the epoch's record and console line, best tracking, the epoch-end checkpoint."""
        st = self.stats
        t_eval = time.perf_counter()
        report = self.evaluate()
        eval_time = time.perf_counter() - t_eval
        sums = torch.tensor([st.loss_sum, st.loss_count], device=self.accelerator.device, dtype=torch.float64)
        loss_sum, loss_count = self.accelerator.reduce(sums, "sum").tolist()  # the loss over every rank's batches
        train_loss = loss_sum / max(loss_count, 1)
        record = {"kind": "epoch", "epoch": epoch + 1, "stage": stage_name, "stage_index": stage_index,
                  "train_loss": train_loss, "samples": st.samples,
                  "val_rmse": report["rmse"] if report else None,
                  "val_per_question": report["per_question"] if report else None,
                  "val_per_tier": report["per_tier"] if report else None,
                  "epoch_time": st.train_time + eval_time, "data_wait": st.data_wait,
                  "first_batch_wait": st.first_batch_wait, "compute_time": st.train_time - st.data_wait,
                  "eval_time": eval_time, "images_per_s": st.samples / max(st.train_time, 1e-9),
                  "ceiling_images_per_s": self.ceiling}
        # what the loader costs even when nobody waits on it: the fed rate against the bare step's
        record["of_ceiling"] = record["images_per_s"] / self.ceiling if self.ceiling else None
        self.log(record)
        if self.is_main:
            tiers = " ".join(f"{k} {v:.4f}" for k, v in (record["val_per_tier"] or {}).items())
            val = f"val RMSE {record['val_rmse']:.5f} ({tiers})" if report else "no val shards"
            print(f"epoch {epoch + 1:>3}/{self.cfg.epochs} [{stage_name}] loss {train_loss:.5f} {val} "
                  f"{record['epoch_time']:.1f} s (data wait {st.data_wait:.1f} s) {record['images_per_s']:,.0f} img/s"
                  + (f" ({record['of_ceiling']:.0%} of the ceiling)" if self.ceiling else ""), flush=True)
        improved = report is not None and report["rmse"] <= self.best_rmse
        if improved:
            self.best_rmse = report["rmse"]
        self.stats = EpochStats()
        self.step_in_epoch = 0
        self.save_checkpoint(epoch + 1, 0, best=improved)

    def lr_of(self, group: str) -> float | None:
        return next((g["lr"] for g in self.t.optimizer.param_groups if g["name"] == group), None)

    def measure_ceiling(self) -> float | None:
        """The compute ceiling (gzfast.ceiling): the step on synthetic tensors, its effects undone."""
        t, acc = self.t, self.accelerator
        return ceiling.measure_ceiling(t, lambda b: training_step(t.train_model, t.optimizer, acc, b.images, b.labels),
                                       self.cfg.image_size, 37, self.cfg.ceiling_probe, self.cfg.grad_accum + 1)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation RMSE over every val sample once, across processes. Fixed-shape batches (the last one
        padded, the padding dropped) so a compiled model never recompiles; predictions stay on the
        device until one copy at the end."""
        acc = self.accelerator
        if self.val_loader is None:
            self.val_loader = make_loader(self.cfg.loader, self.val_paths, train=False, pad_last_batch=True,
                                          **self._loader_args())
        model = self.t.train_model
        model.eval()
        preds, targets = [], []
        for batch in self.val_loader:
            with acc.autocast():
                out = model(batch.images)
            preds.append(out[:len(batch)].float())
            targets.append(batch.labels[:len(batch)])
        model.train()
        mine = (torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy()) if preds else \
            (np.zeros((0, 37), np.float32), np.zeros((0, 37), np.float32))
        from accelerate.utils import gather_object
        parts = gather_object([mine])
        return evaluation_report(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                 self.high, self.low)

    def run_config(self) -> dict:
        """config.json: the config, and how this launch split it (the batch is global; each process takes
        `per_process_batch` per accumulation step)."""
        return {**self.cfg.to_dict(), "world_size": self.accelerator.num_processes,
                "per_process_batch": self.t.micro_batch}

    def fit(self) -> int:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.run_config(), indent=1) + "\n")
            print("config: " + json.dumps(self.run_config()), flush=True)
            print(f"processes {self.accelerator.num_processes}, device {self.accelerator.device}, "
                  f"micro-batch {self.t.micro_batch} x grad-accum {cfg.grad_accum}", flush=True)
            for note in self.notes + self.t.notes:
                print(note, flush=True)
        if self.epoch >= cfg.epochs:
            if self.is_main:
                print(f"{self.run_dir}: already trained for {cfg.epochs} epochs; nothing to do")
            return 0
        if self.cfg.trackers():
            name = self.run_dir.name
            self.accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(cfg),
                                           init_kwargs={"wandb": {"name": name}, "mlflow": {"run_name": name}})
            self.tracking = True
        self.ceiling = self.measure_ceiling()
        if self.is_main and self.ceiling:
            print(f"compute ceiling: {self.ceiling:,.0f} img/s (the training step on synthetic tensors)", flush=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < cfg.epochs:
                finished = self.train_epoch(self.epoch)
                if finished:
                    self.epoch += 1
                # a signal during the epoch's last step stops after its checkpoint
                if not finished or (self.epoch < cfg.epochs and self._stop_requested(True)):
                    if self.is_main:
                        print(f"stopped in epoch {self.epoch + 1}, at global step {self.global_step}; checkpoint "
                              f"saved in {self.ckpt_dir / ckpt.LAST}. Continue with: --resume --out {self.run_dir}",
                              file=sys.stderr, flush=True)
                    return 128 + int(self.stop_signal)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.prefetch.shutdown(wait=True, cancel_futures=True)
            if self.tracking:
                self.accelerator.end_training()
        if self.is_main:
            self.summary()
        return 0

    def summary(self):
        """Final table: this run against predicting the training mean for every galaxy."""
        epochs = [json.loads(line) for line in self.metrics_path.read_text().splitlines()]
        epochs = [r for r in epochs if r["kind"] == "epoch"]
        _, val_labels = read_labels(self.val_paths)
        _, train_labels = read_labels(self.data.paths("train"))
        baseline = rmse(np.broadcast_to(train_labels.astype(np.float64).mean(axis=0), val_labels.shape), val_labels)
        final = epochs[-1]["val_rmse"]
        best = min(r["val_rmse"] for r in epochs)
        total = sum(r["epoch_time"] for r in epochs)
        rows = [("final val RMSE", f"{final:.5f}"), ("best val RMSE", f"{best:.5f}"),
                ("predict-the-training-mean RMSE", f"{baseline:.5f}"), ("final / baseline", f"{final / baseline:.3f}"),
                ("epochs", str(len(epochs))), ("training wall time", f"{total:.1f} s"),
                ("mean images/s", f"{np.mean([r['images_per_s'] for r in epochs]):,.0f}")]
        width = max(len(k) for k, _ in rows)
        print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
        (self.run_dir / "summary.json").write_text(json.dumps(
            {"final_val_rmse": final, "best_val_rmse": best, "baseline_rmse": baseline,
             "ratio": final / baseline, "epochs": len(epochs), "train_seconds": total}, indent=1) + "\n")
        if self.cfg.plot:
            from gzfast.plot import plot_runs
            print(f"plot: {plot_runs([self.run_dir])}")


ERROR_KEY = "gzfast/error"  # in torch.distributed's store: the first rank's error, for every other rank


def _rank_and_store():
    """(rank, the process group's key-value store) of a run of several processes, else (None, None). The
    store lives in the launcher (torchrun's agent), so it outlives a rank that exits."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None, None
    try:
        return dist.get_rank(), dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private accessor: without it, each rank reports only its own error
        return dist.get_rank(), None


def _report(message: str) -> str:
    """Shares a rank's error with the others (they fail at their next collective, with nothing to say)."""
    rank, store = _rank_and_store()
    if rank is None:
        return message
    message = f"rank {rank}: {message}"
    if store is not None:
        with contextlib.suppress(Exception):
            if not store.check([ERROR_KEY]):  # the first error is the cause; later ones are its echoes
                store.set(ERROR_KEY, message)
    return message


def _error_of_another_rank(timeout_s: float = 5.0) -> str | None:
    """The error another rank shared, when a collective failed because that rank exited."""
    rank, store = _rank_and_store()
    if store is None:
        return None
    try:
        store.wait([ERROR_KEY], datetime.timedelta(seconds=timeout_s))
        return store.get(ERROR_KEY).decode()
    except Exception:  # noqa: BLE001 - the store itself may be gone with the launcher
        return None


def main(argv=None) -> int:
    try:
        cfg, state, notes = resolve_config(argv, torch.cuda.is_available())
        trainer = Trainer(cfg, state, notes)
        return trainer.fit()
    except (ConfigError, LoaderError, LayoutError, ScheduleError, TrainingStopped) as exc:
        print(f"train: error: {_report(str(exc))}", file=sys.stderr)
        return 2 if not isinstance(exc, TrainingStopped) else 3
    except OSError as exc:  # a full disk, a folder we may not write: name the file and the cause
        print("train: error: " + _report(f"cannot write or read {exc.filename or 'a file'}: {exc.strerror or exc}; "
                                          f"the last checkpoint stays as it was"), file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        print("train: error: " + _report(f"out of GPU memory ({first_line(exc)}); lower --batch-size (or raise "
                                          f"--grad-accum to keep the global batch)"), file=sys.stderr)
        return 2
    except RuntimeError:
        # a collective broke because another rank stopped: say why it did. The launcher is already sending
        # SIGTERM to the survivors; the few ms of reading the message must not die of it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        other = _error_of_another_rank()
        if other is None:
            raise
        print(f"train: error: {other}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
