"""Train a GZ2 ConvNeXt on packed shards: `[accelerate launch] gzfast/train.py [--curriculum [SCHEDULE]] ...`.

The study's settings are the defaults (DESIGN §1); a curriculum stage is just another shard list. The
training step sees only (images, labels); which loader made them is not its business. Host syncs happen
only every `log_every` steps (loss logging, NaN check, stop requests) and at epoch ends.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch gzfast/train.py): make `gzfast` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gzfast import checkpoint as ckpt
from gzfast.config import RESUME_FREE, ConfigError, TrainConfig, explicit_values
from gzfast.curriculum import parse_schedule, shards_for_epoch, split_shards, stage_at
from gzfast.data import LoaderError, make_loader
from gzfast.labels import read_labels
from gzfast.metrics import evaluation_report, rmse
from gzfast.model import GZ2Model, freeze, load_pretrained, param_groups
from shard_tools.pack import load_manifest

# Fields of metrics.jsonl that measure time; everything else is reproducible given the seed.
TIMING_KEYS = {"time", "epoch_time", "data_wait", "compute_time", "eval_time", "images_per_s"}


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


def resolve_config(argv, cuda: bool) -> tuple[TrainConfig, dict | None]:
    """The config of this run and, with --resume, the checkpoint to continue from."""
    values = explicit_values(argv)
    if not values.get("resume"):
        cfg = TrainConfig(**values).resolve(cuda)
        if (Path(cfg.out) / "metrics.jsonl").exists() or (Path(cfg.out) / "checkpoints").exists():
            raise ConfigError(f"{cfg.out} already holds a run; continue it with --resume or pick another --out")
        return cfg, None
    if not values.get("out"):
        raise ConfigError("--resume needs --out RUN (the run folder to continue)")
    last = Path(values["out"]) / "checkpoints" / ckpt.LAST
    if not last.exists():
        raise ConfigError(f"--resume: nothing to resume, {last} does not exist")
    state = ckpt.load(last)
    saved = state["config"]
    wanted = TrainConfig(**{**saved, **values}).resolve(cuda)
    changed = {k: (saved[k], v) for k, v in wanted.to_dict().items() if k not in RESUME_FREE and saved.get(k) != v}
    if changed and not wanted.force:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"--resume refused: the config differs from the checkpoint's ({lines}); "
                          f"pass --force to continue anyway")
    return wanted, state


class Trainer:
    def __init__(self, cfg: TrainConfig, resume_state: dict | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.cuda = torch.cuda.is_available()
        self.accelerator = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                                       gradient_accumulation_steps=cfg.grad_accum, cpu=not self.cuda)
        acc = self.accelerator
        self.main = acc.is_main_process
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        world = acc.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by processes x grad-accum "
                              f"({world} x {cfg.grad_accum})")
        self.micro_batch = cfg.batch_size // (world * cfg.grad_accum)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.manifest = load_manifest(cfg.shards)
        self.manifest["root"] = str(Path(cfg.shards))
        self.data_fingerprint = ckpt.manifest_fingerprint(self.manifest)
        self.schedule = parse_schedule(cfg.schedule_text(), cfg.epochs)
        self.val_paths = split_shards(self.manifest, "val")
        thresholds = self.manifest["thresholds"]
        self.high, self.low = thresholds["high"], thresholds["low"]

        from accelerate.utils import set_seed
        set_seed(cfg.seed)
        self.model = GZ2Model(cfg.model, cfg.head)
        self.notes = []
        if cfg.pretrained:
            info = load_pretrained(self.model, cfg.pretrained)
            self.notes.append(f"loaded {info['loaded']} tensors from {cfg.pretrained} (classifier replaced)")
        else:
            self.notes.append("WARNING: no --pretrained weights given: training starts from RANDOM weights "
                              "(no model hub is used; pass a local timm state dict to fine-tune as the study did)")
        if not self.cuda and torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1:
            self.notes.append(f"note: torch uses 1 of {os.cpu_count()} CPU threads (accelerate launch sets "
                              f"OMP_NUM_THREADS=1): pass --num_cpu_threads_per_process {os.cpu_count()} to it")
        frozen = freeze(self.model, cfg.freeze_stages)
        self.notes.append(f"frozen: stem + {cfg.freeze_stages} stage(s) ({frozen:,} parameters); "
                          f"trainable {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,}")
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_rmse = math.inf
        self.acc_state = self._fresh_epoch_state()
        if resume_state is not None:
            self._check_resume(resume_state)
            self.model.load_state_dict(resume_state["model"])
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.epoch, self.step_in_epoch = resume_state["epoch"], resume_state["step"]
            self.global_step, self.best_rmse = resume_state["global_step"], resume_state["best_rmse"]
            self.acc_state = resume_state["epoch_state"]
            self._truncate_metrics(resume_state["metrics_lines"])
        model = torch.compile(self.model) if cfg.compile == "on" else self.model
        self.train_model, self.optimizer = acc.prepare(model, self.optimizer)
        if resume_state is not None:
            ckpt.set_rng_state(resume_state["rng"])
        self.stop_signal = None
        self.start_time = time.time() - (resume_state or {}).get("elapsed", 0.0)
        self.metrics_lines = self._count_metrics_lines()

    # ---------------------------------------------------------------------------------------------
    def _check_resume(self, state: dict):
        if state["data_fingerprint"] != self.data_fingerprint and not self.cfg.force:
            raise ConfigError(f"--resume refused: the shards in {self.cfg.shards} differ from the ones this run "
                              f"was trained on (manifest changed); pass --force to continue anyway")

    def _count_metrics_lines(self) -> int:
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path) as f:
            return sum(1 for _ in f)

    def _truncate_metrics(self, keep: int):
        """Drops what was logged after the checkpoint: the resumed run logs it again."""
        if self.main and self.metrics_path.exists():
            lines = self.metrics_path.read_text().splitlines(keepends=True)[:keep]
            self.metrics_path.write_text("".join(lines))

    @staticmethod
    def _fresh_epoch_state() -> dict:
        return {"loss_sum": 0.0, "loss_count": 0, "window_sum": 0.0, "window_count": 0, "window_start": 0,
                "data_wait": 0.0, "train_time": 0.0, "samples": 0}

    def log(self, record: dict):
        if not self.main:
            return
        record = {**record, "time": round(time.time() - self.start_time, 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.metrics_lines += 1

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
        if not self.main:
            return
        model = acc.unwrap_model(self.train_model)
        model = getattr(model, "_orig_mod", model)
        state = {"config": self.cfg.to_dict(), "data_fingerprint": self.data_fingerprint,
                 "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": epoch, "step": step, "global_step": self.global_step, "best_rmse": self.best_rmse,
                 "stage": stage_at(self.schedule, min(epoch, self.cfg.epochs - 1))[0],
                 "epoch_state": dict(self.acc_state), "rng": ckpt.rng_state(),
                 "metrics_lines": self.metrics_lines, "elapsed": time.time() - self.start_time}
        ckpt.atomic_save(state, self.ckpt_dir / ckpt.LAST)
        if best:
            ckpt.atomic_copy(self.ckpt_dir / ckpt.LAST, self.ckpt_dir / ckpt.BEST)

    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step, then exiting "
                  f"(again to abort without saving)", file=sys.stderr, flush=True)

    def _stop_requested(self, at_sync_point: bool) -> bool:
        """All processes agree on stopping, at log points only when there are several (no extra syncs)."""
        if self.accelerator.num_processes == 1:
            return self.stop_signal is not None
        if not at_sync_point:
            return False
        flag = torch.tensor([1.0 if self.stop_signal is not None else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())

    # ---------------------------------------------------------------------------------------------
    def training_labels_mean(self) -> np.ndarray:
        _, labels = read_labels(split_shards(self.manifest, "train"))
        return labels.astype(np.float64).mean(axis=0)

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        if not self.val_paths:
            return None
        acc = self.accelerator
        self.train_model.eval()
        loader = make_loader(self.cfg.loader, self.val_paths, train=False, batch_size=self.micro_batch,
                             image_size=self.cfg.image_size, crop_size=self.cfg.crop_size,
                             rank=acc.process_index, world_size=acc.num_processes, seed=self.cfg.seed,
                             workers=self.cfg.workers)
        preds, labels, ids = [], [], []
        for batch in loader:
            with acc.autocast():
                out = self.train_model(batch.images.to(acc.device, non_blocking=True))
            preds.append(out.float().cpu())
            labels.append(batch.labels.float().cpu())
            ids.append(batch.ids.cpu())
        self.train_model.train()
        from accelerate.utils import gather_object
        parts = gather_object([(torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(ids).numpy())])
        pred = np.concatenate([p[0] for p in parts])
        target = np.concatenate([p[1] for p in parts])
        return evaluation_report(pred, target, self.high, self.low)

    def train_epoch(self, epoch: int) -> bool:
        """One epoch from `self.step_in_epoch`. Returns False if stopped by a signal (checkpoint saved)."""
        cfg, acc = self.cfg, self.accelerator
        stage_index, stage = stage_at(self.schedule, epoch)
        paths = shards_for_epoch(self.manifest, self.schedule, epoch)
        loader = make_loader(cfg.loader, paths, train=True, batch_size=self.micro_batch, image_size=cfg.image_size,
                             crop_size=cfg.crop_size, rank=acc.process_index, world_size=acc.num_processes,
                             seed=cfg.seed, epoch=epoch, workers=cfg.workers, zoom=cfg.zoom, shift=cfg.shift)
        n_batches = len(loader)
        st = self.acc_state
        device = acc.device
        loss_sum = torch.tensor(st["loss_sum"], device=device, dtype=torch.float64)
        window_sum = torch.tensor(st["window_sum"], device=device, dtype=torch.float64)
        bar = tqdm(total=n_batches, initial=self.step_in_epoch, disable=None if self.main else True, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs} [{stage.name}]", unit="batch", dynamic_ncols=True)
        self.train_model.train()
        t_start = time.perf_counter()
        it = iter(loader)
        for _ in range(self.step_in_epoch):  # resumed mid-epoch: the same stream, skipped to where it stopped
            next(it)
        step = self.step_in_epoch
        while step < n_batches:
            t0 = time.perf_counter()
            batch = next(it)
            st["data_wait"] += time.perf_counter() - t0
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * self.lr_factor(epoch + step / n_batches)
            # a no-op for dali-gpu batches; CPU loaders on a GPU machine hand over here
            images = batch.images.to(acc.device, non_blocking=True)
            labels = batch.labels.to(acc.device, non_blocking=True)
            loss = training_step(self.train_model, self.optimizer, acc, images, labels)
            loss_sum += loss
            window_sum += loss
            st["loss_count"] += 1
            st["window_count"] += 1
            st["samples"] += len(batch) * acc.num_processes
            step += 1
            self.global_step += 1
            bar.update(1)
            at_log = step % cfg.log_every == 0 or step == n_batches
            if at_log:
                window = (window_sum / st["window_count"]).item()
                if not math.isfinite(window):
                    bar.close()
                    raise TrainingStopped(
                        f"loss became {window} in steps {st['window_start'] + 1}-{step} of epoch {epoch + 1} "
                        f"(global step {self.global_step}); stopping. The last good checkpoint is "
                        f"{self.ckpt_dir / ckpt.LAST if (self.ckpt_dir / ckpt.LAST).exists() else 'not written yet'}; "
                        f"try a lower --lr-backbone/--lr-head or --precision fp32")
                self.log({"kind": "step", "epoch": epoch + 1, "step": step, "global_step": self.global_step,
                          "stage": stage.name, "loss": window,
                          "lr_backbone": self.optimizer.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{window:.5f}")
                window_sum.zero_()
                st["window_count"], st["window_start"] = 0, step
            if step < n_batches and self._stop_requested(at_log):
                st["train_time"] += time.perf_counter() - t_start
                st["loss_sum"], st["window_sum"] = loss_sum.item(), window_sum.item()
                self.save_checkpoint(epoch, step)
                bar.close()
                return False
        if self.cuda:
            torch.cuda.synchronize()
        st["train_time"] += time.perf_counter() - t_start
        st["loss_sum"] = loss_sum.item()
        bar.close()
        del it, loader

        t_eval = time.perf_counter()
        report = self.evaluate()
        eval_time = time.perf_counter() - t_eval
        train_loss = st["loss_sum"] / max(st["loss_count"], 1)
        record = {"kind": "epoch", "epoch": epoch + 1, "stage": stage.name, "stage_index": stage_index,
                  "train_loss": train_loss, "samples": st["samples"],
                  "val_rmse": report["rmse"] if report else None,
                  "val_per_question": report["per_question"] if report else None,
                  "val_per_tier": report["per_tier"] if report else None,
                  "epoch_time": st["train_time"] + eval_time, "data_wait": st["data_wait"],
                  "compute_time": st["train_time"] - st["data_wait"], "eval_time": eval_time,
                  "images_per_s": st["samples"] / max(st["train_time"], 1e-9)}
        self.log(record)
        if self.main:
            tiers = " ".join(f"{k} {v:.4f}" for k, v in (record["val_per_tier"] or {}).items())
            val = f"val RMSE {record['val_rmse']:.5f} ({tiers})" if report else "no val shards"
            print(f"epoch {epoch + 1:>3}/{cfg.epochs} [{stage.name}] loss {train_loss:.5f} {val} "
                  f"{record['epoch_time']:.1f} s (data wait {st['data_wait']:.1f} s) {record['images_per_s']:,.0f} img/s",
                  flush=True)
        val_rmse = record["val_rmse"]
        improved = val_rmse is not None and val_rmse <= self.best_rmse
        if improved:
            self.best_rmse = val_rmse
        self.acc_state = self._fresh_epoch_state()
        self.step_in_epoch = 0
        self.save_checkpoint(epoch + 1, 0, best=improved)
        return True

    def fit(self) -> int:
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
            print("config: " + json.dumps(cfg.to_dict()), flush=True)
            print(f"processes {self.accelerator.num_processes}, device {self.accelerator.device}, "
                  f"micro-batch {self.micro_batch} x grad-accum {cfg.grad_accum}", flush=True)
            for note in self.notes:
                print(note, flush=True)
        if self.epoch >= cfg.epochs:
            if self.main:
                print(f"{self.run_dir}: already trained for {cfg.epochs} epochs; nothing to do")
            return 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < cfg.epochs:
                if not self.train_epoch(self.epoch):
                    if self.main:
                        print(f"stopped at epoch {self.epoch + 1}, step {self.global_step}; checkpoint saved in "
                              f"{self.ckpt_dir / ckpt.LAST}. Continue with: --resume --out {self.run_dir}",
                              file=sys.stderr, flush=True)
                    return 128 + int(self.stop_signal)
                self.epoch += 1
                if self.epoch < cfg.epochs and self._stop_requested(True):  # signal during the epoch's last step
                    if self.main:
                        print(f"stopped after epoch {self.epoch}; checkpoint saved in {self.ckpt_dir / ckpt.LAST}. "
                              f"Continue with: --resume --out {self.run_dir}", file=sys.stderr, flush=True)
                    return 128 + int(self.stop_signal)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if self.main:
            self.summary()
        return 0

    def summary(self):
        """Final table: this run against predicting the training mean for every galaxy."""
        epochs = [json.loads(l) for l in self.metrics_path.read_text().splitlines()]
        epochs = [r for r in epochs if r["kind"] == "epoch"]
        if not self.val_paths:
            print("no validation shards: no summary")
            return
        _, val_labels = read_labels(self.val_paths)
        mean = self.training_labels_mean()
        baseline = rmse(np.broadcast_to(mean, val_labels.shape), val_labels)
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


def main(argv=None) -> int:
    try:
        cfg, state = resolve_config(argv, torch.cuda.is_available())
        trainer = Trainer(cfg, state)
        return trainer.fit()
    except (ConfigError, LoaderError, FileNotFoundError, TrainingStopped) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, TrainingStopped) else 3


if __name__ == "__main__":
    sys.exit(main())
