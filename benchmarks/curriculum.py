"""The study's experiment as one command: every curriculum schedule against plain training, several seeds.

    python benchmarks/curriculum.py [--shards OUT] [--schedules "all:20;high:4,high+medium:4,all:12;high:5,all:15"]
        [--seeds 3] [--config FILE] [--out EXPERIMENT] [--target RMSE] [--launch PREFIX] [--quick] [-- TRAINER FLAGS]

Each schedule x seed is trained by the trainer itself (gzfast/train.py, a subprocess), on the same shards with
the same settings; only `--curriculum` (and the `--epochs` it lasts) and `--seed` change. Runs go to EXPERIMENT/runs/<schedule>-seed<S>/,
their console output to EXPERIMENT/logs/. Runs are made seed by seed (every schedule of seed 0 first), so a
half-finished experiment already holds comparable runs. Started again, the experiment skips finished runs
(summary.json and every epoch in metrics.jsonl), continues an unfinished one from its last checkpoint with
the trainer's exact `--resume`, and restarts one that never reached a checkpoint (its folder holds only
the trainer's own files).

Per schedule, mean +- standard deviation over the seeds: final and best validation RMSE, wall time, images
seen, and the wall time and images needed to reach a target RMSE (by default the plain schedule's mean final
RMSE x 1.02: "the same loss in less time"). Wall time is the sum of the epoch records' `epoch_time`
(training + validation of every epoch; process start, model build and the compute-ceiling probe are left
out, so a resumed run counts only the epochs it trained); images seen is the sum of their `samples`.
A run reaches the target at the end of the first epoch whose validation RMSE is <= the target. That
arithmetic, the verdict and the words are benchmarks/experiment_summary.py; this file launches, locks,
resumes and writes.

Writes EXPERIMENT/summary.json, EXPERIMENT/summary.md (the table) and EXPERIMENT/figure2.png. It writes only
in a new or empty folder or one an experiment made, and never over a file or folder it did not write.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.experiment_summary import TARGET_FACTOR, report, run_result, summarize  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from gzfast.config import RESUME_FREE, ConfigError, TrainConfig, explicit_values  # noqa: E402
from gzfast.curriculum import ScheduleError, parse_schedule, total_epochs  # noqa: E402
from shard_tools.errors import UserError, run_command  # noqa: E402
from shard_tools.layout import TMP_MARK, LayoutError, PackedSet, atomic_path, write_atomic  # noqa: E402

PROG = "curriculum"
DEFAULT_SCHEDULES = "all:20;high:4,high+medium:4,all:12;high:5,all:15"
DEFAULT_SEEDS = 3
DEFAULT_SHARDS = "data/shards"
# --quick: a tiny synthetic set, make run's model at 32 px, two schedules x two seeds of three epochs (about
# a minute on 2 cores; resnet10t starts in half the time convnext_atto takes). The settings are defaults:
# --config and the trainer flags after `--` still win.
QUICK_SCHEDULES = "all:3;high:1,all:2"
QUICK_SEEDS = 2
QUICK_SETTINGS = {"model": "resnet10t", "image_size": 32, "crop_size": 128, "batch_size": 16,
                  "lr_backbone": 1e-3, "lr_head": 1e-3, "log_every": 5, "ceiling_probe": 0, "plot": False}
QUICK_DATA = ["--n-train", "360", "--n-test", "0", "--seed", "1"], ["--val-fraction", "0.15", "--shard-size", "40"]
# The trainer flags the experiment sets itself, per run.
OWN_FLAGS = {"out", "curriculum", "seed", "epochs", "resume", "force", "shards"}
# What the experiment writes in its folder, each a plain file or a folder (never a link), and what the
# trainer writes in a run folder: anything else there is someone else's and is never written over or deleted.
EXPERIMENT_FILES = {"experiment.json": "file", "summary.json": "file", "summary.md": "file", "figure2.png": "file",
                    ".lock": "file", "runs": "folder", "logs": "folder", "data": "folder"}
RESULT_FILES = ("summary.json", "summary.md", "figure2.png")
# What may be there before experiment.json records the plan: --quick's data (made first: the plan holds its
# fingerprint) and a temp experiment.json cut by a kill. Anything else without experiment.json is not ours.
BEFORE_PLAN = {"data", "experiment.json", ".lock"}
QUICK_DATA_FOLDERS = {"synthetic", "shards"}
TRAINER_FILES = {"config.json", "metrics.jsonl", "checkpoints", "summary.json", "curves.png", "gzfast", "wandb", "mlruns",
                 ".lock"}  # .lock: the run lock a killed trainer leaves behind
LOG_START = b"$ "  # every log the runner writes begins with the command line


class ExperimentError(UserError):
    """An anticipated failure: one line `curriculum: error: ...`, exit 2."""


# --- the plan ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    schedule: str
    seed: int
    epochs: int
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


def schedule_slug(schedule: str) -> str:
    """A folder name for a schedule: `high:4,high+medium:4,all:12` -> `high4_high+medium4_all12`."""
    return schedule.replace(" ", "").replace(":", "").replace(",", "_")


def parse_schedules(text: str) -> list[str]:
    schedules = [s.strip().replace(" ", "") for s in text.split(";") if s.strip()]
    if not schedules:
        raise ExperimentError(f"--schedules {text!r}: no schedule; give e.g. \"{DEFAULT_SCHEDULES}\"")
    for s in schedules:
        try:
            parse_schedule(s)
        except ScheduleError as exc:
            raise ExperimentError(f"--schedules: {exc}; schedules are separated by ';', stages by ','") from None
    dupes = {s for s in schedules if schedules.count(s) > 1}
    if dupes:
        raise ExperimentError(f"--schedules: {', '.join(sorted(dupes))} given twice")
    return schedules


def trainer_argv(args, schedule: str, seed: int, out: Path) -> list[str]:
    argv = ["--shards", str(args.shards)]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]
    argv += args.quick_flags + args.trainer_flags
    # the schedule sets the epochs of its run (a config file's `epochs` is for plain runs)
    epochs = total_epochs(parse_schedule(schedule))
    return argv + ["--curriculum", schedule, "--epochs", str(epochs), "--seed", str(seed), "--out", str(out)]


def check_trainer_flags(flags: list[str]) -> None:
    try:
        given = explicit_values(flags)
    except ConfigError as exc:
        raise ExperimentError(f"trainer flags: {exc}") from None
    own = sorted(OWN_FLAGS & set(given))
    if own:
        raise ExperimentError(f"trainer flag(s) {', '.join('--' + k.replace('_', '-') for k in own)} after `--`: the "
                              f"experiment sets these per run; use its --shards, --schedules, --seeds and --out")


def quick_flags(args) -> list[str]:
    """--quick's settings, for the keys that neither --config nor the trainer flags set."""
    if not args.quick:
        return []
    given = set(explicit_values(["--config", args.config] if args.config else [])) | set(explicit_values(args.trainer_flags))
    flags = []
    for key, value in QUICK_SETTINGS.items():
        if key in given:
            continue
        flag = "--" + key.replace("_", "-")
        flags += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return flags


def resolve_runs(args, cuda: bool) -> tuple[list[Run], dict]:
    """Every run of the experiment, checked by the trainer's own config code before anything starts, and
    the settings they share (what must not change when the experiment is continued)."""
    runs, settings = [], None
    for seed in range(args.seeds):
        for schedule in args.schedules:
            folder = args.out / "runs" / f"{schedule_slug(schedule)}-seed{seed}"
            try:
                cfg = TrainConfig(**explicit_values(trainer_argv(args, schedule, seed, folder))).resolve(cuda)
            except ConfigError as exc:
                raise ExperimentError(f"schedule {schedule} seed {seed}: {exc}") from None
            if settings is None:
                settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE | OWN_FLAGS}
            runs.append(Run(schedule, seed, cfg.epochs, folder))
    return runs, settings


# --- the experiment folder --------------------------------------------------------------------------

def ours(name: str, allowed: Container[str]) -> bool:
    """`name` is one of `allowed`, or the temp name (atomic_path) of one."""
    return name in allowed or (name.startswith(".") and TMP_MARK in name
                               and name[1:].rpartition(TMP_MARK)[0] in allowed)


def is_kind(path: Path, kind: str) -> bool:
    """Whether `path` is absent or what the experiment writes there: a plain file or a folder, not a link."""
    if not path.is_symlink() and not path.exists():
        return True
    return not path.is_symlink() and (path.is_dir() if kind == "folder" else path.is_file())


def check_kind(path: Path, kind: str, where: str):
    if not is_kind(path, kind):
        raise ExperimentError(f"{path} is not a {kind} the experiment wrote (someone else's, or a link); "
                              f"move it away or pick another {where}")


def check_folder(out: Path) -> dict | None:
    """A new or empty folder, or one holding only what an experiment writes; returns its experiment.json.
    Anything else there, or a result with no experiment.json beside it, is someone else's: refuse."""
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a folder; pick another --out")
    if not out.is_dir():
        return None
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if not ours(n, EXPERIMENT_FILES)]
    if foreign:
        raise ExperimentError(f"--out {out} holds files that are not an experiment's ({', '.join(foreign[:3])}); "
                              f"pick a new or empty --out")
    for name in names:  # a temp name is a file, like what it is the temp of
        check_kind(out / name, EXPERIMENT_FILES.get(name, "file"), "--out")
    data = out / "data"
    stray = sorted(p.name for p in data.iterdir() if p.name not in QUICK_DATA_FOLDERS) if data.is_dir() else []
    if stray:
        raise ExperimentError(f"{data} holds files that are not --quick's data ({', '.join(stray[:3])}); "
                              f"pick a new or empty --out")
    meta = out / "experiment.json"
    if not meta.exists():
        unplanned = [n for n in names if not ours(n, BEFORE_PLAN)]
        if unplanned:
            raise ExperimentError(f"--out {out} holds {', '.join(unplanned[:3])} but no experiment.json: not an "
                                  f"experiment's folder; pick a new or empty --out")
        return None
    return read_plan(meta)


def read_plan(meta: Path) -> dict:
    try:
        plan = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"{meta}: unreadable ({exc}); pick a new --out") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("settings", {}), dict):
        raise ExperimentError(f"{meta}: not an experiment's plan (no settings mapping); pick a new --out")
    return plan


def check_run_paths(runs: list[Run], out: Path):
    """Each run's folder and log, where they exist, are the experiment's: a folder (run_state looks inside),
    and a plain file that is empty or begins with the command line the runner writes first."""
    for run in runs:
        check_kind(run.folder, "folder", "--out")
        log = out / "logs" / f"{run.name}.log"
        check_kind(log, "file", "--out")
        if log.exists():
            with open(log, "rb") as f:
                start = f.read(len(LOG_START))
            if start and start != LOG_START:
                raise ExperimentError(f"{log} is not a log the experiment wrote; move it away or pick another --out")


def record_plan(out: Path, plan: dict, old: dict | None):
    """The same settings and shards as the experiment already in `out` (schedules and seeds may be added:
    runs are found by their folder names), then the plan written."""
    if old is not None:
        if old.get("data_fingerprint") != plan["data_fingerprint"]:
            raise ExperimentError(f"--out {out} holds an experiment on other shards; pick another --out")
        was = old.get("settings", {})
        diff = ", ".join([f"{k}: {was.get(k)!r} -> {v!r}" for k, v in plan["settings"].items() if was.get(k) != v]
                         + [f"{k}: {v!r} -> (unset)" for k, v in was.items() if k not in plan["settings"]])
        if diff:
            raise ExperimentError(f"--out {out} holds an experiment with other settings ({diff}); pick another --out, "
                                  f"or continue it with its own settings")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "experiment.json", json.dumps(plan, indent=1) + "\n")


@contextlib.contextmanager
def experiment_lock(out: Path):
    """Holds EXPERIMENT/.lock (flock). Every trainer started inherits the descriptor, so the lock stays held
    while a trainer of a killed experiment still runs: two experiments never train into one folder."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a link there is not ours
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ExperimentError(f"another experiment (pid {pid}) or a training run it started is still "
                                  f"running in {out}; wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)


def epoch_records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a kill: the trainer drops it on --resume
            continue
        if row.get("kind") == "epoch":
            rows.append(row)
    return rows


def run_state(run: Run) -> str:
    """`done`, `resume` or `new`; a folder that holds someone else's files is refused."""
    folder = run.folder
    if not folder.exists() or not any(folder.iterdir()):
        return "new"
    if (folder / "summary.json").exists() and [r["epoch"] for r in epoch_records(folder)] == list(range(1, run.epochs + 1)):
        return "done"
    if (folder / "checkpoints" / "last.pt").exists():
        return "resume"
    # killed before its first checkpoint: nothing to continue; start again if every file is the trainer's
    foreign = [p.name for p in folder.iterdir() if not ours(p.name, TRAINER_FILES)]
    ckpts = folder / "checkpoints"
    if ckpts.is_dir():
        foreign += [f"checkpoints/{p.name}" for p in ckpts.iterdir() if TMP_MARK not in p.name]
    if foreign:
        raise ExperimentError(f"{folder} holds files the trainer did not write ({', '.join(sorted(foreign)[:3])}); "
                              f"move them away and run the experiment again")
    for p in folder.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return "new"


# --- running ----------------------------------------------------------------------------------------

class Runner:
    """Starts the trainer for one run, forwards its console with a prefix, and passes a SIGTERM on (a
    terminal's Ctrl-C reaches the trainer itself: it saves a checkpoint and exits)."""

    def __init__(self, args, lock_fd: int):
        self.args, self.lock_fd = args, lock_fd
        self.proc: subprocess.Popen | None = None
        self.stop_signal: int | None = None

    def on_signal(self, signum, frame):
        self.stop_signal = signum
        if signum == signal.SIGTERM and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def train(self, run: Run, resume: bool, prefix: str) -> int:
        argv = trainer_argv(self.args, run.schedule, run.seed, run.folder) + (["--resume"] if resume else [])
        cmd = self.args.launch + [str(REPO / "gzfast" / "train.py"), *argv]
        log = self.args.out / "logs" / f"{run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                         bufsize=1, pass_fds=(self.lock_fd,))
            for line in self.proc.stdout:
                f.write(line)
                f.flush()
                if not line.startswith("config: "):  # the resolved config is one very long line; the log keeps it
                    print(f"{prefix} {line.rstrip()}", flush=True)
            rc = self.proc.wait()
        self.proc = None
        return rc


def run_all(args, runs: list[Run], lock_fd: int) -> int:
    runner = Runner(args, lock_fd)
    old = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0, trained = time.time(), 0
    try:
        for k, run in enumerate(runs, 1):
            if runner.stop_signal is not None:
                break
            state = run_state(run)
            head = f"[{k}/{len(runs)} {run.schedule} seed {run.seed}]"
            if state == "done":
                print(f"{head} finished before: {run.folder}", flush=True)
                continue
            done_epochs = len(epoch_records(run.folder)) if state == "resume" else 0
            eta = ""
            if trained:
                eta = f"; about {(time.time() - t0) / trained * (len(runs) - k + 1) / 60:.0f} min left for the rest"
            print(f"{head} {'continuing after epoch ' + str(done_epochs) if state == 'resume' else 'starting'} "
                  f"({run.epochs} epochs) in {run.folder}{eta}", flush=True)
            rc = runner.train(run, state == "resume", head)
            trained += 1
            if runner.stop_signal is not None or rc in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT,
                                                        -signal.SIGTERM):
                print(f"{PROG}: stopped during {run.name}; run the same command again to continue where it stopped",
                      file=sys.stderr, flush=True)
                return 128 + (runner.stop_signal or signal.SIGTERM)
            if rc != 0:
                raise ExperimentError(f"the trainer failed on {run.name} (exit {rc}); its output is in "
                                      f"{args.out / 'logs' / (run.name + '.log')}")
            if [r["epoch"] for r in epoch_records(run.folder)] != list(range(1, run.epochs + 1)):
                raise ExperimentError(f"{run.folder}: the trainer exited without all {run.epochs} epochs in "
                                      f"metrics.jsonl; see {args.out / 'logs' / (run.name + '.log')}")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if runner.stop_signal is not None:
        print(f"{PROG}: stopped; run the same command again to continue", file=sys.stderr, flush=True)
        return 128 + runner.stop_signal
    return 0


# --- results ----------------------------------------------------------------------------------------

def summarize_runs(schedules: list[str], runs: list[Run], out: Path, target: float | None) -> dict:
    """The summary of the finished runs, from their metrics.jsonl (benchmarks/experiment_summary.py)."""
    results = [run_result(r.schedule, r.seed, str(r.folder.relative_to(out)), epoch_records(r.folder)) for r in runs]
    return summarize(schedules, results, target)


def write_results(out: Path, summary: dict) -> str:
    """summary.json, summary.md and figure2.png, each written whole or not at all; returns the report."""
    for name in RESULT_FILES:  # checked again: the experiment may have run for hours since check_folder
        check_kind(out / name, "file", "--out")
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    text = report(summary)
    write_atomic(out / "summary.md", f"# Curriculum experiment: {out.name}\n\n{text}")
    figure2(summary, out / "figure2.png")
    return text


# --- Figure 2 -------------------------------------------------------------------------------------

STAGE_FACE = {"high": "#2ca02c", "high+medium": "#f0b400"}  # the `all` stage: hollow markers
CURRICULUM_COLOURS = ["#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PLAIN_COLOUR = "#7f7f7f"


def figure2(summary: dict, path: Path) -> Path:
    """The study's Figure 2 for the experiment: training loss per epoch, validation RMSE against wall time
    and against images seen. One line per schedule (the mean over seeds; plain in grey), the min-max of
    the seeds shaded, markers filled by curriculum stage, the target RMSE dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), constrained_layout=True)
    try:
        colours = iter(CURRICULUM_COLOURS * 4)
        handles = [draw_schedule(axes, [r["curve"] for r in summary["runs"] if r["schedule"] == row["schedule"]],
                                 row["schedule"], PLAIN_COLOUR if row["kind"] == "plain" else next(colours))
                   for row in summary["schedules"]]
        label_axes(axes, handles, summary["target_rmse"])
        with atomic_path(path) as tmp:  # like every result the experiment writes: whole or not at all
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def draw_schedule(axes, curves: list[list[dict]], schedule: str, colour: str):
    """One schedule on the three panels: the mean over its seeds' curves (as long as the shortest), the
    seeds' min-max shaded; returns its legend entry."""
    from matplotlib.lines import Line2D

    n = min(len(c) for c in curves)

    def column(key, i):
        return [c[i][key] for c in curves]

    epochs = [curves[0][i]["epoch"] for i in range(n)]
    faces = [STAGE_FACE.get(curves[0][i]["stage"], "white") for i in range(n)]
    x_time = [statistics.fmean(column("time_s", i)) / 60 for i in range(n)]
    x_img = [statistics.fmean(column("images", i)) for i in range(n)]
    for ax, x, key in zip(axes, (epochs, x_time, x_img), ("train_loss", "val_rmse", "val_rmse")):
        mean = [statistics.fmean(column(key, i)) for i in range(n)]
        ax.fill_between(x, [min(column(key, i)) for i in range(n)], [max(column(key, i)) for i in range(n)],
                        color=colour, alpha=0.18, lw=0)
        ax.plot(x, mean, color=colour, lw=1.8, zorder=3)
        ax.scatter(x, mean, s=22, zorder=4, edgecolors=colour, linewidths=1.2, c=faces)
    return Line2D([], [], color=colour, lw=1.8, label=f"{schedule} ({len(curves)} seeds)")


def label_axes(axes, handles: list, target: float):
    """The target line on the RMSE panels, the axes' labels and titles, and the legend."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ax_loss, ax_time, ax_img = axes
    for ax in (ax_time, ax_img):
        ax.axhline(target, color="black", ls="--", lw=1)
    handles = [*handles, Line2D([], [], color="black", ls="--", lw=1, label=f"target RMSE {target:.4f}")]
    handles += [Line2D([], [], ls="", marker="o", markerfacecolor=f, markeredgecolor="black", label=f"stage {s}")
                for s, f in (*STAGE_FACE.items(), ("all", "white"))]
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(xlabel="epoch", ylabel="training loss (MSE)", title="training loss per epoch", yscale="log")
    ax_time.set(xlabel="wall time (min, training + validation)", ylabel="validation RMSE",
                title="validation RMSE against wall time")
    ax_img.set(xlabel="images seen", ylabel="validation RMSE", title="validation RMSE against images seen")
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_img.legend(handles=handles, fontsize=8, loc="upper right")
    ax_img.figure.suptitle("Curriculum against plain training: mean over seeds, shaded from the lowest to the highest "
                           "seed", fontsize=11)


# --- command line -----------------------------------------------------------------------------------

def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_flags = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trainer_flags = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(prog="benchmarks/curriculum.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help=f"packed set (default {DEFAULT_SHARDS}; with --quick a tiny synthetic "
                                                   f"set made in EXPERIMENT/data)")
    ap.add_argument("--schedules", default=None, help=f"schedules separated by ';' (default \"{DEFAULT_SCHEDULES}\"; "
                                                      f"--quick: \"{QUICK_SCHEDULES}\")")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 per schedule (default {DEFAULT_SEEDS}; "
                                                           f"--quick: {QUICK_SEEDS})")
    ap.add_argument("--config", default=None, help="trainer config file (YAML/JSON) every run uses")
    ap.add_argument("--out", default=None, help="experiment folder (default runs/curriculum, --quick: runs/curriculum-quick); "
                                                "the same --out continues an interrupted experiment")
    ap.add_argument("--target", type=float, default=None,
                    help=f"target val RMSE (default: the plain schedule's mean final RMSE x {TARGET_FACTOR})")
    ap.add_argument("--launch", default=None, help="command that starts a trainer, before gzfast/train.py (default: this "
                                                   "python; e.g. \"accelerate launch --num_cpu_threads_per_process 2\")")
    ap.add_argument("--quick", action="store_true",
                    help="tiny: 360 synthetic galaxies, resnet10t at 32 px, 2 schedules x 2 seeds of 3 epochs")
    args = ap.parse_args(argv)
    args.trainer_flags = trainer_flags
    args.schedules = parse_schedules(args.schedules or (QUICK_SCHEDULES if args.quick else DEFAULT_SCHEDULES))
    args.seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if args.seeds < 1:
        raise ExperimentError(f"--seeds {args.seeds}: need at least 1")
    if args.target is not None and args.target <= 0:
        raise ExperimentError(f"--target {args.target}: a val RMSE is > 0")
    args.out = Path(args.out or ("runs/curriculum-quick" if args.quick else "runs/curriculum")).resolve()
    args.launch = shlex.split(args.launch) if args.launch else [sys.executable]
    if args.config and not Path(args.config).is_file():
        raise ExperimentError(f"--config {args.config}: file not found")
    return args


def ensure_shards(args) -> PackedSet:
    if args.shards is None and args.quick:  # the tiny synthetic set, made (once) inside the experiment folder
        data = args.out / "data"
        args.shards = data / "shards"
        if not (args.shards / "manifest.json").exists():
            print(f"{PROG}: --quick: making a tiny synthetic set in {data}", flush=True)
            for cmd in (["synth", "--out", str(data / "synthetic"), *QUICK_DATA[0]],
                        ["pack", "--data", str(data / "synthetic"), "--out", str(args.shards), *QUICK_DATA[1]]):
                res = subprocess.run([sys.executable, "-m", "shard_tools", *cmd], cwd=REPO, capture_output=True, text=True)
                if res.returncode:
                    raise ExperimentError(f"`python -m shard_tools {' '.join(cmd)}` failed: "
                                          f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    args.shards = Path(args.shards or DEFAULT_SHARDS).resolve()
    try:
        return PackedSet.open(args.shards)
    except LayoutError as exc:
        raise ExperimentError(f"--shards {args.shards}: {exc}") from None


def experiment(argv) -> int:
    """The experiment: checks everything, records the plan, trains what is missing, writes the results."""
    args = parse_args(argv)
    check_trainer_flags(args.trainer_flags)
    args.quick_flags = quick_flags(args)
    old = check_folder(args.out)
    packed = ensure_shards(args)
    import torch
    runs, settings = resolve_runs(args, torch.cuda.is_available())
    check_run_paths(runs, args.out)
    plan = {"settings": settings, "data_fingerprint": packed.fingerprint, "shards": str(args.shards),
            "config_file": args.config, "trainer_flags": args.quick_flags + args.trainer_flags, "launch": args.launch}
    record_plan(args.out, plan, old)
    with experiment_lock(args.out) as fd:
        print(f"{PROG}: {len(args.schedules)} schedule(s) x {args.seeds} seed(s) = {len(runs)} runs in {args.out}",
              flush=True)
        rc = run_all(args, runs, fd)
        if rc:
            return rc
        summary = summarize_runs(args.schedules, runs, args.out, args.target)
        summary["provenance"] = provenance()
        summary["experiment"] = {"schedules": args.schedules, "seeds": list(range(args.seeds)), **plan}
        text = write_results(args.out, summary)
    print("\n" + text)
    print(f"results: {', '.join(str(args.out / name) for name in RESULT_FILES)}")
    return 0


def main(argv=None) -> int:
    return run_command(PROG, lambda: experiment(argv))


if __name__ == "__main__":
    sys.exit(main())
