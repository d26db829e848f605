"""Train a galaxy-morphology ConvNeXt on packed shards: `[accelerate launch] gzfast/train.py [--curriculum [SCHEDULE]] ...`.

The study's settings are the defaults (docs/design.md); a curriculum stage is just another shard list. The
training step sees only (images, labels) already on the device; which loader made them is not its
business. Host syncs happen only every `log_every` steps (loss logging, NaN check, stop requests) and at
epoch ends. The next epoch's loader is built in the background while the current epoch ends and
validation runs; the validation loader is built once and reused.

The pieces: `resume.py` (the config, the run folder and its lock, every resume refusal), `run_state.py`
(the progress a checkpoint holds), `metrics_log.py` (metrics.jsonl and trackers), `stopping.py` (signals),
`build.py` (model, optimizer, Accelerator), `loaders/` (batches), `eval_loop.py` (validation).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch gzfast/train.py): make `gzfast` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from gzfast import ceiling, distributed
from gzfast import checkpoint as ckpt
from gzfast.build import Training, build_training, make_accelerator
from gzfast.config import ConfigError, TrainConfig
from gzfast.curriculum import check_schedule, parse_schedule, shards_for_epoch, stage_at
from gzfast.data_facts import DataFacts
from gzfast.eval_loop import predict_batches
from gzfast.heads import to_fractions
from gzfast.loaders import LoaderError, make_loader
from gzfast.loaders.labels import read_labels
from gzfast.loaders.prefetch import NextLoader
from gzfast.losses import DirichletLoss, dirichlet_multinomial_nll, mse
from gzfast.metrics import evaluation_report, rmse
from gzfast.metrics_log import MetricsLog
from gzfast.resume import check_resume, resolve_config, run_lock
from gzfast.run_state import RunState, checkpoint_payload
from gzfast.stopping import StopRequest
from shard_tools.errors import UserError, run_command
from shard_tools.layout import LayoutError, PackedSet, write_atomic

# Fields of metrics.jsonl that measure time; everything else is reproducible given the seed.
TIMING_KEYS = {"time", "epoch_time", "data_wait", "first_batch_wait", "compute_time", "eval_time", "images_per_s",
               "ceiling_images_per_s", "of_ceiling", "ceiling_probe_error"}


class TrainingStopped(UserError):
    """Training cannot go on (diverged loss); the message says where and why."""
    exit_code = 3


def training_step(model, optimizer, accelerator, images: torch.Tensor, targets: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """One (micro-)step: forward under autocast, the loss (MSE on fractions unless `loss_fn` says
    otherwise), backward, and the optimizer step when the accumulation window closes. Returns the loss,
    still on the device (no host sync)."""
    with accelerator.accumulate(model):
        with accelerator.autocast():
            pred = model(images)
        loss = (loss_fn or mse)(pred, targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def lr_factor(cfg: TrainConfig, epoch_progress: float) -> float:
    """Multiplier of the base LRs at a fractional epoch (warm-up, then constant or cosine)."""
    if cfg.warmup_epochs and epoch_progress < cfg.warmup_epochs:
        return (epoch_progress + 1e-9) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch_progress - cfg.warmup_epochs) / span)))
    return 1.0


def next_batch(it, loader):
    """The next batch; a loader that ends before its len() is a LoaderError, not a bare StopIteration."""
    try:
        return next(it)
    except StopIteration:
        raise LoaderError(f"the loader ran out before its {len(loader)} batches; its shards hold fewer samples "
                          f"than their indexes say") from None


def open_training_data(cfg: TrainConfig) -> tuple[PackedSet, list]:
    """The packed set and the schedule, checked before epoch 1: every stage selects shards, there is a
    validation split, and the shards trained on match the manifest."""
    data = PackedSet.open(cfg.shards)
    if cfg.loss == "dirichlet" and not data.has_counts:
        raise ConfigError(f"--loss dirichlet trains on vote counts, and {cfg.shards} was packed from fractions only; "
                          f"pack the catalogue with --labels counts, or train with --loss mse")
    schedule = parse_schedule(cfg.schedule_text(), cfg.epochs)
    check_schedule(data, schedule)
    if not data.paths("val"):
        raise ConfigError(f"{cfg.shards} has no validation shards; pack it with --val-fraction > 0")
    problems = data.problems(data.select("train") + data.select("val"), full=cfg.verify_shards == "full")
    if problems:
        raise LayoutError(f"{len(problems)} problem(s) in the shards of {cfg.shards}, first: {problems[0]}; "
                          f"`python -m shard_tools verify {cfg.shards}` lists them, re-running pack repairs them")
    return data, schedule


def check_steps(cfg: TrainConfig, data: PackedSet, schedule: list, t: Training, world: int):
    """Refuses, before epoch 1, a stage whose epochs give a rank fewer batches than one optimizer step
    needs (grad-accum): it would silently train nothing."""
    for stage in schedule:
        batches = data.samples("train", stage.tiers) // world // t.micro_batch
        if batches < cfg.grad_accum:
            raise ConfigError(f"stage {stage.name}: {data.samples('train', stage.tiers)} training samples make "
                              f"{batches} batch(es) of {t.micro_batch} per process an epoch, fewer than --grad-accum "
                              f"{cfg.grad_accum}: no optimizer step would happen; lower --batch-size or --grad-accum")


class Trainer:
    """A run's fixed parts: config, accelerator, data and schedule, model and optimizer, loaders, metrics
    log and stop request. Its progress is a `RunState` handed to the methods that advance it."""

    def __init__(self, cfg: TrainConfig, resume_state: dict | None = None, notes: list[str] = ()):
        self.cfg, self.notes = cfg, list(notes)
        self.accelerator = acc = make_accelerator(cfg)
        self.is_main = acc.is_main_process
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.data, self.schedule = open_training_data(cfg)
        self.val_paths = self.data.paths("val")
        if resume_state is not None:
            check_resume(resume_state, cfg, self.data.fingerprint, acc.num_processes)
        resume = resume_state or {}
        self.tree = self.data.tree
        self.notes.append(check_memory(cfg, acc))  # before anything is allocated
        self.t: Training = build_training(cfg, acc, resume.get("model"), resume.get("optimizer"), tree=self.tree)
        check_steps(cfg, self.data, self.schedule, self.t, acc.num_processes)
        # from the config, not the optimizer: a resumed optimizer's groups hold the last scheduled LR
        self.base_lrs = [cfg.lr_head if g["name"].startswith("head") else cfg.lr_backbone
                         for g in self.t.optimizer.param_groups]
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", self.is_main, resume.get("elapsed", 0.0))
        if resume:
            self.log.truncate(resume["metrics_lines"])
            ckpt.set_rng_state(resume["rng"])
        # looked up here, not at import: a test may replace the module's mse
        self.loss_fn = DirichletLoss(self.tree) if cfg.loss == "dirichlet" else mse
        self.stop = StopRequest(acc)
        self.next_loader = NextLoader(self._train_loader, acc.device)
        self.val_loader = None
        self.ceiling = None  # images/s of the step on synthetic tensors

    # --- loaders -------------------------------------------------------------------------------------
    def _loader_args(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        return dict(batch_size=self.t.micro_batch, image_size=cfg.image_size, crop_size=cfg.crop_size,
                    rank=acc.process_index, world_size=acc.num_processes, seed=cfg.seed, workers=self.t.loader_workers,
                    device=acc.device, dtype=self.t.image_dtype, source_side=self.data.image_side,
                    label_count=self.tree.n, has_counts=self.data.has_counts, hw_decoder_load=cfg.hw_decoder_load)

    def _train_loader(self, epoch: int):
        return make_loader(self.cfg.loader, shards_for_epoch(self.data, self.schedule, epoch), train=True, epoch=epoch,
                           zoom=self.cfg.zoom, shift=self.cfg.shift, **self._loader_args())

    # --- one epoch -----------------------------------------------------------------------------------
    def train_one_epoch(self, state: RunState) -> bool:
        """Trains epoch `state.epoch` from `state.step` to its end. Returns False when a stop request ended
        it early (its checkpoint is saved)."""
        cfg, acc, t, st = self.cfg, self.accelerator, self.t, state.stats
        _, stage = stage_at(self.schedule, state.epoch)
        t_start = time.perf_counter()
        loader = self.next_loader.take(state.epoch)
        n_batches, first = len(loader), state.step
        sums = torch.tensor([st.loss_sum, st.window_sum], device=acc.device, dtype=torch.float64)
        bar = tqdm(total=n_batches, initial=first, disable=None if self.is_main else True, leave=False, unit="batch",
                   desc=f"epoch {state.epoch + 1}/{cfg.epochs} [{stage.name}]", dynamic_ncols=True)
        t.train_model.train()
        it = iter(loader)
        for _ in range(first):  # resumed mid-epoch: the same stream, skipped to where it stopped
            next_batch(it, loader)
        while state.step < n_batches:
            t0 = time.perf_counter()
            batch = next_batch(it, loader)
            waited = time.perf_counter() - (t_start if state.step == first else t0)
            st.data_wait += waited
            if state.step == first:
                st.first_batch_wait += waited
            for g, base in zip(t.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * lr_factor(cfg, state.epoch + state.step / n_batches)
            targets = batch.counts if cfg.loss == "dirichlet" else batch.labels
            sums += training_step(t.train_model, t.optimizer, acc, batch.images, targets, self.loss_fn)
            st.loss_count, st.window_count = st.loss_count + 1, st.window_count + 1
            st.samples += len(batch) * acc.num_processes
            state.step, state.global_step = state.step + 1, state.global_step + 1
            bar.update(1)
            at_log = state.step % cfg.log_every == 0 or state.step == n_batches
            if at_log:
                self._log_window(state, stage.name, sums, bar)
            if state.step < n_batches and self.stop.requested(at_log):
                self._close_sums(st, sums, t_start)
                self.save_checkpoint(state)
                bar.close()
                return False
        ceiling.sync(acc.device)
        self._close_sums(st, sums, t_start)
        bar.close()
        if state.epoch + 1 < cfg.epochs:
            self.next_loader.submit(state.epoch + 1)  # built while validation runs
        return True

    @staticmethod
    def _close_sums(st, sums: torch.Tensor, t_start: float):
        st.train_time += time.perf_counter() - t_start
        st.loss_sum, st.window_sum = sums.tolist()

    def _log_window(self, state: RunState, stage_name: str, sums: torch.Tensor, bar):
        """A log point (the only host sync of the loop): the window's mean loss, checked for NaN/inf."""
        st = state.stats
        # the mean over all ranks (they run the same number of steps), so every rank sees a NaN on any one
        window = self.accelerator.reduce(sums[1:2].clone(), "mean").item() / st.window_count
        if not math.isfinite(window):
            bar.close()
            last = self.ckpt_dir / ckpt.LAST
            raise TrainingStopped(
                f"loss became {window} in steps {st.window_start + 1}-{state.step} of epoch {state.epoch + 1} "
                f"(global step {state.global_step}); stopping. The last good checkpoint is "
                f"{last if last.exists() else 'not written yet'}; try a lower --lr-backbone/--lr-head or --precision fp32")
        lr = next((g["lr"] for g in self.t.optimizer.param_groups if g["name"] == "backbone"), None)
        self.log.append({"kind": "step", "epoch": state.epoch + 1, "step": state.step, "global_step": state.global_step,
                         "stage": stage_name, "loss": window, "lr_backbone": lr}, state.global_step)
        bar.set_postfix(loss=f"{window:.5f}")
        sums[1].zero_()
        st.window_count, st.window_start = 0, state.step

    # --- the epoch's end -----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation over every val sample once, across processes (each rank its slice): RMSE on the
        fractions overall, per question and per tier; with --loss dirichlet also the mean NLL per question."""
        acc, cfg = self.accelerator, self.cfg
        if self.val_loader is None:
            self.val_loader = make_loader(cfg.loader, self.val_paths, train=False, pad_last_batch=True,
                                          **self._loader_args())
        model = self.t.train_model
        model.eval()
        mine = predict_batches(model, self.val_loader, acc.autocast, acc.device, self.tree.n)
        model.train()
        parts = distributed.gather((mine.preds, mine.labels, mine.counts))
        # a rank with nothing to evaluate hands over empty arrays
        outputs, labels, counts = (np.concatenate(got) if (got := [p[k] for p in parts if p[k] is not None]) else None
                                   for k in range(3))
        return validation_report(outputs, labels, counts, cfg, self.tree, self.data.thresholds)

    def end_epoch(self, state: RunState):
        """Validation, the epoch's record and console line, best tracking, the epoch-end checkpoint."""
        st, acc = state.stats, self.accelerator
        stage_index, stage = stage_at(self.schedule, state.epoch)
        t_eval = time.perf_counter()
        report = self.evaluate()
        eval_time = time.perf_counter() - t_eval
        sums = torch.tensor([st.loss_sum, st.loss_count], device=acc.device, dtype=torch.float64)
        loss_sum, loss_count = acc.reduce(sums, "sum").tolist()  # the loss over every rank's batches
        record = epoch_record(state, stage_index, stage.name, report, eval_time, loss_sum / max(loss_count, 1), self.ceiling)
        self.log.append(record, state.global_step)
        if self.is_main:
            print(epoch_line(record, self.cfg.epochs), flush=True)
        improved = report["rmse"] <= state.best_rmse
        if improved:
            state.best_rmse = report["rmse"]
        state.next_epoch()
        self.save_checkpoint(state, best=improved)

    def save_checkpoint(self, state: RunState, best: bool = False):
        """Saves where the run stands (`best` also copies it to best.pt); every rank's own loss sums go in."""
        acc = self.accelerator
        acc.wait_for_everyone()
        per_rank = distributed.gather(state.stats.state_dict())
        if not self.is_main:
            return
        state.elapsed, state.metrics_lines = self.log.elapsed(), self.log.lines
        payload = checkpoint_payload(self.cfg.to_dict(), self.data.fingerprint, DataFacts.of(self.data).to_record(),
                                     self.t.model.state_dict(), self.t.optimizer.state_dict(), acc.num_processes,
                                     state.state_dict(per_rank))
        ckpt.atomic_save(payload, self.ckpt_dir / ckpt.LAST)
        if best:
            ckpt.atomic_copy(self.ckpt_dir / ckpt.LAST, self.ckpt_dir / ckpt.BEST)

    # --- the run -------------------------------------------------------------------------------------
    def fit(self, state: RunState) -> int:
        """Trains from `state` to the last epoch; returns the exit code (128 + signal when stopped)."""
        cfg = self.cfg
        if self.is_main:
            announce(cfg, self.accelerator, self.t, self.data, self.notes)
        if state.epoch >= cfg.epochs:
            if self.is_main:
                print(f"{self.run_dir}: already trained for {cfg.epochs} epochs; nothing to do")
            return 0
        if cfg.trackers():
            self.log.start_trackers(self.accelerator, cfg.trackers(), cfg.to_dict(), self.run_dir.name)
        self.ceiling = self.measure_ceiling()
        try:
            with self.stop.installed():
                while state.epoch < cfg.epochs:
                    finished = self.train_one_epoch(state)
                    if finished:
                        self.end_epoch(state)
                    # a signal during the epoch's last step stops after its checkpoint
                    if not finished or (state.epoch < cfg.epochs and self.stop.requested(True)):
                        if self.is_main:
                            print(f"stopped in epoch {state.epoch + 1}, at global step {state.global_step}; checkpoint "
                                  f"saved in {self.ckpt_dir / ckpt.LAST}. Continue with: --resume --out {self.run_dir}",
                                  file=sys.stderr, flush=True)
                        return self.stop.exit_code
        finally:
            self.next_loader.close()
            self.log.end_trackers()
        if self.is_main:
            write_summary(self.run_dir, self.log.epochs(), self.val_paths, self.data.paths("train"), self.tree.n, cfg.plot)
        return 0

    def measure_ceiling(self) -> float | None:
        """The compute ceiling (gzfast.ceiling): the step on synthetic tensors, its effects undone."""
        t, acc = self.t, self.accelerator
        rate = ceiling.measure_ceiling(
            t, lambda b: training_step(t.train_model, t.optimizer, acc, b.images, b.labels, self.loss_fn),
            self.cfg.image_size, self.tree.n, self.cfg.ceiling_probe, self.cfg.grad_accum + 1)
        if self.is_main and rate:
            _, stage = stage_at(self.schedule, 0)
            print(f"compute ceiling: {rate:,.0f} img/s (the training step on synthetic tensors)", flush=True)
            print(ceiling.expected_epoch_line(rate, self.data.samples("train", stage.tiers), acc.device.type == "cuda"),
                  flush=True)
        return rate


def announce(cfg: TrainConfig, acc, t: Training, data: PackedSet, notes: list[str]):
    """RUN/config.json (the config with the launch facts, config.LAUNCH_FACTS, beside it) and the start-up
    lines: what is trained on what, where, and the choices made for this machine."""
    config = {**cfg.to_dict(), "world_size": acc.num_processes, "per_process_batch": t.micro_batch,
              "data": DataFacts.of(data).to_record(), "command": command_line(), "commit": code_commit()}
    write_atomic(Path(cfg.out) / "config.json", json.dumps(config, indent=1) + "\n")
    print("config: " + json.dumps({k: v for k, v in config.items() if k != "data"}), flush=True)
    print(f"data: {data.root}: {data.tree.name} tree ({data.tree.n} answers), labels from "
          f"{'vote counts' if data.has_counts else 'vote fractions'}, {data.image_side} px images", flush=True)
    print(f"processes {acc.num_processes}, device {acc.device}, micro-batch {t.micro_batch} x grad-accum "
          f"{cfg.grad_accum}", flush=True)
    for note in notes + t.notes:
        print(note, flush=True)


def validation_report(outputs: np.ndarray, labels: np.ndarray, counts: np.ndarray | None, cfg: TrainConfig, tree,
                      thresholds: dict) -> dict:
    """RMSE on the fractions overall, per question and per tier; with --loss dirichlet also the NLL of the
    vote counts, per question and summed."""
    fractions = to_fractions(torch.from_numpy(outputs), cfg.head, tree).numpy()
    report = evaluation_report(fractions, labels, thresholds["high"], thresholds["low"], tree)
    if cfg.loss == "dirichlet":
        nll = dirichlet_multinomial_nll(torch.from_numpy(outputs), torch.from_numpy(counts), tree).mean(dim=0).tolist()
        report["nll_per_question"] = {q.name: v for q, v in zip(tree.questions, nll)}
        report["nll"] = float(sum(nll))
    return report


def epoch_record(state: RunState, stage_index: int, stage_name: str, report: dict, eval_time: float, train_loss: float,
                 ceiling_rate: float | None) -> dict:
    """metrics.jsonl's record of the epoch that just ended (its running sums in `state.stats`)."""
    st = state.stats
    record = {"kind": "epoch", "epoch": state.epoch + 1, "stage": stage_name, "stage_index": stage_index,
              "train_loss": train_loss, "samples": st.samples, "val_rmse": report["rmse"],
              "val_per_question": report["per_question"], "val_per_tier": report["per_tier"],
              **({"val_nll": report["nll"], "val_nll_per_question": report["nll_per_question"]} if "nll" in report else {}),
              "epoch_time": st.train_time + eval_time, "data_wait": st.data_wait,
              "first_batch_wait": st.first_batch_wait, "compute_time": st.train_time - st.data_wait,
              "eval_time": eval_time, "images_per_s": st.samples / max(st.train_time, 1e-9),
              "ceiling_images_per_s": ceiling_rate}
    # what the loader costs even when nobody waits on it: the fed rate against the bare step's (above it: the
    # probe under-measured, said so, never printed as a fraction)
    against = ceiling.ceiling_report(record["images_per_s"], ceiling_rate)
    record["of_ceiling"], record["ceiling_probe_error"] = against["of_ceiling"], against["ceiling_probe_error"]
    return record


def check_memory(cfg: TrainConfig, acc) -> str:
    """One line of what a process of this run needs and what is free; refuses, before anything is
    allocated, a configuration that cannot fit (gzfast.memory)."""
    from gzfast.build import check_model_name
    from gzfast.memory import check_fits, estimate_training_bytes
    from gzfast.model import GZ2Model
    check_model_name(cfg.model)
    cuda = acc.device.type == "cuda"
    micro = max(1, cfg.batch_size // (acc.num_processes * cfg.grad_accum))
    if micro == 1:
        with torch.device("meta"):  # the model's layers without its memory
            model = GZ2Model(cfg.model, cfg.head)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(f"--batch-size {cfg.batch_size} over {acc.num_processes} process(es) x grad-accum "
                              f"{cfg.grad_accum} gives micro-batches of 1 sample, and {cfg.model} has BatchNorm layers, "
                              f"which cannot train on one sample; raise --batch-size or lower --grad-accum")
    sharing = 1 if cuda else int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))  # the ranks of one machine
    try:
        estimate = estimate_training_bytes(cfg, micro_batch=micro, cuda=cuda)
    except ValueError as exc:  # a model the freezing does not fit (model.freeze says which)
        raise ConfigError(str(exc)) from None
    return check_fits(estimate, acc.device, sharing=sharing)


def command_line() -> str:
    """The command line that started this process (what a model card says trained the model)."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name if sys.argv else "train.py", *sys.argv[1:]])


def code_commit() -> str | None:
    """The git commit of this checkout (None outside a git checkout), recorded with the run."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def epoch_line(record: dict, epochs: int) -> str:
    """The console line of an epoch record."""
    tiers = " ".join(f"{k} {v:.4f}" for k, v in (record["val_per_tier"] or {}).items())
    text = ceiling.ceiling_report(record["images_per_s"], record["ceiling_images_per_s"])["text"]
    ceil = f" ({text})" if text else ""
    return (f"epoch {record['epoch']:>3}/{epochs} [{record['stage']}] loss {record['train_loss']:.5f} "
            f"val RMSE {record['val_rmse']:.5f} ({tiers}) {record['epoch_time']:.1f} s "
            f"(data wait {record['data_wait']:.1f} s) {record['images_per_s']:,.0f} img/s{ceil}")


def write_summary(run_dir: Path, epochs: list[dict], val_paths: list[str], train_paths: list[str], label_count: int,
                  plot: bool):
    """The final table, this run against predicting the training mean for every galaxy, and summary.json."""
    _, val_labels = read_labels(val_paths, label_count)
    _, train_labels = read_labels(train_paths, label_count)
    baseline = rmse(np.broadcast_to(train_labels.astype(np.float64).mean(axis=0), val_labels.shape), val_labels)
    final, best = epochs[-1]["val_rmse"], min(r["val_rmse"] for r in epochs)
    total = sum(r["epoch_time"] for r in epochs)
    rows = [("final val RMSE", f"{final:.5f}"), ("best val RMSE", f"{best:.5f}"),
            ("predict-the-training-mean RMSE", f"{baseline:.5f}"), ("final / baseline", f"{final / baseline:.3f}"),
            ("epochs", str(len(epochs))), ("training wall time", f"{total:.1f} s"),
            ("mean images/s", f"{np.mean([r['images_per_s'] for r in epochs]):,.0f}")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    write_atomic(run_dir / "summary.json", json.dumps(
        {"final_val_rmse": final, "best_val_rmse": best, "baseline_rmse": baseline, "ratio": final / baseline,
         "epochs": len(epochs), "train_seconds": total}, indent=1) + "\n")
    if plot:
        from gzfast.plot import PlotError, plot_runs
        try:
            print(f"plot: {plot_runs([run_dir])}")
        except PlotError as exc:  # the run is trained and saved: a figure it cannot draw is a note, not a failure
            print(f"plot: not drawn ({exc})", file=sys.stderr)


def train(argv=None) -> int:
    """Resolves the config, takes the run folder and trains."""
    try:
        is_main = int(os.environ.get("RANK", "0")) == 0
        cfg, resume, notes = resolve_config(argv, torch.cuda.is_available(), is_main=is_main)
        with run_lock(Path(cfg.out), is_main=is_main):
            trainer = Trainer(cfg, resume, notes)
            acc = trainer.accelerator
            state = RunState.from_checkpoint(resume, acc.process_index, acc.num_processes) if resume else RunState()
            return trainer.fit(state)
    except RuntimeError as exc:
        if isinstance(exc, UserError) or isinstance(exc, torch.OutOfMemoryError):
            raise
        # a collective broke because another rank stopped: say why it did. The launcher is already sending
        # SIGTERM to the survivors; the few ms of reading the message must not die of it.
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        other = distributed.error_of_another_rank()
        if other is None:
            raise
        print(f"train: error: {other}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return run_command("train", lambda: train(argv), report=distributed.share_error,
                       interrupted="interrupted; the last checkpoint stays as it was (continue with --resume --out RUN)",
                       io_advice="the last checkpoint stays as it was")


if __name__ == "__main__":
    sys.exit(main())
