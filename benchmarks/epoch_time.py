"""Epoch time, measured directly: loaders alone, the training step on synthetic tensors (the compute
ceiling) and fed by each loader, and whole epochs through the trainer itself.

    python benchmarks/epoch_time.py [--shards data/shards] [--config FILE] [--quick] [--what ...] ...

The recipe measured is the trainer's: `--config FILE` (a trainer config), else on a GPU the trainer's
defaults (the study's ConvNeXt-small at 224 px, batch 512) and on a CPU `make run`'s recipe
(gzfast/configs/cpu_small.yaml); flags on top. A recipe whose estimated memory exceeds what the machine
has free stops with one line before anything is allocated (gzfast.memory).

Loader-only rates: per repeat a fresh loader epoch (its build timed apart, from the second build on,
since the first also pays for library start-up), warm-up batches, one window inside the epoch.
"Of ceiling": synthetic and loader-fed windows taken in turn on the same step (gzfast.ceiling.interleave),
the median of each side, so both see the same load on a shared machine. `dali-gpu` hands over batches whose
GPU work may still be queued, so its cost shows as a lower fed rate, not as data wait. The whole-epoch
measurement runs the trainer on the curriculum `high:1,high+medium:1,all:1` and judges the last epoch: a
whole epoch with validation, after a stage change that the first evaluation's compilation cannot hide.
Every result carries its provenance (machine, GPU, versions, git commit, config); files are only ever
added to --out, never replaced.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.cli import OneLineParser, count  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from gzfast import ceiling  # noqa: E402
from gzfast.build import budget_cores, build_training, usable_cores  # noqa: E402
from gzfast.config import ConfigError, TrainConfig, load_file  # noqa: E402
from gzfast.curriculum import ScheduleError  # noqa: E402
from gzfast.loaders import LOADERS, LoaderError, make_loader  # noqa: E402
from gzfast.memory import check_fits, estimate_training_bytes  # noqa: E402
from gzfast.train import training_step  # noqa: E402
from shard_tools.errors import UserError, run_command  # noqa: E402
from shard_tools.layout import LayoutError, PackedSet, write_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY_EPOCH_IMAGES = 61_578  # the Kaggle training set
STUDY_EPOCH_SECONDS = 360    # the study: 6 minutes an epoch
DEFAULT_SHARDS = "data/shards"
CPU_RECIPE = REPO / "gzfast" / "configs" / "cpu_small.yaml"  # make run's
EPOCH_SCHEDULE = "high:1,high+medium:1,all:1"  # judged on the last epoch (see whole_epoch)
MEASUREMENTS = ("loaders", "synthetic", "train", "epoch")
LEAD_IN = 2  # fed batches stepped untimed before each fed window (a loader's queue fills during the synthetic one)


class BenchmarkError(UserError):
    """The benchmark cannot measure what it was asked to; the message says why and what to do."""


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- measurements -----------------------------------------------------------------------------------

def open_loader(args, cfg: TrainConfig, name: str, paths: list[str], workers: int, epoch: int):
    return make_loader(name, paths, train=True, batch_size=args.batch_size, image_size=cfg.image_size,
                       crop_size=cfg.crop_size, workers=workers, seed=0, epoch=epoch, device=args.device,
                       dtype=args.image_dtype, hw_decoder_load=cfg.hw_decoder_load)


def loader_windows(args, cfg: TrainConfig, name: str, paths: list[str]) -> tuple[list[ceiling.Window], list[float], dict]:
    """The loader alone. Per repeat a fresh epoch's loader (build timed unless first), warm-up, one window
    inside the epoch. Returns the windows, the build-to-first-batch times and the loader's settings."""
    cuda = torch.cuda.is_available()
    torch_threads, workers, why = budget_cores(name, cfg.workers, cuda)
    print(f"{name}: {why}", flush=True)
    all_threads = torch.get_num_threads()
    if not cuda:  # as the trainer runs it: torch (normalizing the batches) on its share of the cores
        torch.set_num_threads(torch_threads)
    try:
        return loader_epochs(args, cfg, name, paths, workers)
    finally:
        torch.set_num_threads(all_threads)


def loader_epochs(args, cfg: TrainConfig, name: str, paths: list[str], workers: int):
    windows, builds, settings = [], [], {}
    for r in range(args.repeats + 1):  # build 0 pays for library start-up: not a stage change
        t = time.perf_counter()
        loader = open_loader(args, cfg, name, paths, workers, r)
        settings = {"threads": getattr(loader, "threads", getattr(loader, "workers", None)),
                    "hw_decoder_load": getattr(loader, "hw_decoder_load", None) if name == "dali-gpu" else None}
        it = iter(loader)
        next(it)
        sync()
        if r:
            builds.append(time.perf_counter() - t)
        n = min(args.batches, len(loader) - 1 - args.warmup)
        if n < 1:
            raise LoaderError(f"an epoch of {len(loader)} batches leaves no window after {args.warmup} warm-up "
                              f"batches; use more shards or a smaller --batch-size/--warmup")
        if n < args.batches and r == 1:
            print(f"note: {name}: windows of {n} batches (an epoch has {len(loader)})", flush=True)
        for _ in range(args.warmup):
            next(it)
        if r:
            windows.append(ceiling.run_window(None, it, n, args.device))
    return windows, builds, settings


def fed_against_ceiling(args, cfg: TrainConfig, name: str, paths: list[str], step, synthetic) -> ceiling.Interleaved:
    """Interleaved windows of the step on synthetic tensors (torch on every core) and fed by `name` (torch
    on the trainer's share of the cores, the loader on the rest)."""
    cuda = torch.cuda.is_available()
    torch_threads, workers, why = budget_cores(name, cfg.workers, cuda)
    print(f"{name}: {why}", flush=True)
    all_threads = torch.get_num_threads()

    def fed_epoch(k):
        if not cuda:
            torch.set_num_threads(torch_threads)
        return open_loader(args, cfg, name, paths, workers, k)

    def side(which):
        if not cuda:
            torch.set_num_threads(all_threads if which == "synthetic" else torch_threads)

    try:
        return ceiling.interleave(step, synthetic, fed_epoch, args.device, rounds=args.repeats,
                                  window_steps=args.batches, lead_in=LEAD_IN, on_side=side)
    except ValueError as exc:
        raise LoaderError(f"{exc}; use more shards or a smaller --batch-size/--batches") from None
    finally:
        torch.set_num_threads(all_threads)


def summarize(name: str, kind: str, windows: list[ceiling.Window], builds=None) -> dict:
    rate = statistics.median(w.rate for w in windows)
    return {"what": kind, "loader": name, "images_per_s": rate,
            "spread": [min(w.rate for w in windows), max(w.rate for w in windows)],
            "data_wait_fraction": statistics.median(w.wait_s / w.seconds for w in windows),
            "of_ceiling": None, "epoch_s_61578": STUDY_EPOCH_IMAGES / rate,
            "speedup_vs_study": STUDY_EPOCH_SECONDS / (STUDY_EPOCH_IMAGES / rate),
            "first_batch_s": statistics.median(builds) if builds else None}


def load_average() -> float | None:
    """Runnable processes per core over the last minute: above 1, other jobs share the cores and every
    rate here is a lower bound (torch's threads wait on each other when a core is taken)."""
    try:
        return os.getloadavg()[0] / usable_cores()
    except OSError:
        return None


def fed_row(name: str, kind: str, result: ceiling.Interleaved, load: float | None) -> dict:
    return {**summarize(name, kind, result.fed), **result.record(), "images_per_s": result.fed_rate,
            "load_per_core": load}


def trainer_epochs(config: Path, echo: bool) -> list[dict]:
    """Runs gzfast/train.py on `config` (its console shown when `echo`); its epoch records."""
    cmd = [sys.executable, str(REPO / "gzfast" / "train.py"), "--config", str(config)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if echo:
            print(f"  train: {line.rstrip()}", flush=True)
    if proc.wait():
        last = next((x for x in reversed(tail) if x.strip()), f"exit {proc.returncode}")
        raise LoaderError(f"the trainer failed: {last}")
    run = Path(json.loads(config.read_text())["out"])
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


def whole_epoch(args, cfg: TrainConfig, loader: str, echo: bool = False, trainer_flags: dict | None = None) -> dict:
    """Three epochs through the trainer itself (train + validation, as `make run` runs them) on the
    curriculum high:1,high+medium:1,all:1, judged on the last: a whole epoch over every training shard,
    and a stage change whose loader was built during the previous validation, which (unlike the first
    one's) compiles nothing, so it hides nothing. The 61,578-image figure scales the measured epoch
    (training + validation) by 61,578 over the images it read; on a full-size set that is 1."""
    data = PackedSet.open(args.shards)
    with tempfile.TemporaryDirectory(prefix="epoch_time-") as tmp:
        flags = {**{k: v for k, v in cfg.to_dict().items() if v is not None}, "shards": args.shards,
                 "out": str(Path(tmp) / "run"), "loader": loader, "epochs": None, "curriculum": EPOCH_SCHEDULE,
                 "batch_size": args.batch_size, "plot": False, **(trainer_flags or {})}
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({k: v for k, v in flags.items() if v is not None}))
        epochs = trainer_epochs(config, echo)
    last, val = epochs[-1], data.samples("val")
    rate = last["images_per_s"]
    scale = STUDY_EPOCH_IMAGES / max(last["samples"] + val, 1)
    return {"what": f"whole epoch through the trainer (train {last['samples']:,} + val {val:,} images, after a stage "
                    f"change)", "loader": loader, "images_per_s": rate, "spread": [rate, rate],
            "data_wait_fraction": last["data_wait"] / last["epoch_time"], "of_ceiling": last.get("of_ceiling"),
            "epoch_s": last["epoch_time"], "eval_s": last["eval_time"], "first_batch_wait_s": last["first_batch_wait"],
            "train_samples": last["samples"], "val_samples": val, "schedule": EPOCH_SCHEDULE,
            "epochs": [{k: r.get(k) for k in ("stage", "epoch_time", "eval_time", "first_batch_wait", "images_per_s",
                                              "samples", "ceiling_images_per_s")} for r in epochs],
            "epoch_s_61578": last["epoch_time"] * scale,
            "speedup_vs_study": STUDY_EPOCH_SECONDS / (last["epoch_time"] * scale), "first_batch_s": last["first_batch_wait"]}


def table(rows: list[dict]) -> str:
    head = ("| what | loader | images/s (median) | min-max | data wait | of ceiling | 61,578-image epoch | "
            "vs study's 6 min | pipeline build to first batch |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fb = f"{r['first_batch_s']:.2f} s" if r.get("first_batch_s") is not None else ""
        ceil = f"{100 * r['of_ceiling']:.0f} %" if r.get("of_ceiling") is not None else ""
        if r.get("of_ceiling") and r["of_ceiling"] > 1:  # the two sides did not see the same machine
            ceil += f" (above: noise; load {r.get('load_per_core') or 0:.1f}/core)"
        lines.append(f"| {r['what']} | {r['loader']} | {r['images_per_s']:,.0f} | {r['spread'][0]:,.0f}-{r['spread'][1]:,.0f} "
                     f"| {100 * r['data_wait_fraction']:.0f} % | {ceil} | {r['epoch_s_61578']:,.1f} s | "
                     f"{r['speedup_vs_study']:.1f}x | {fb} |")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------

def parse_args(argv):
    ap = OneLineParser(prog="epoch_time.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help=f"packed set (default {DEFAULT_SHARDS}, made if missing)")
    ap.add_argument("--config", default=None, help="trainer config (YAML/JSON) whose recipe to measure (default: the "
                                                   "trainer's on a GPU, make run's gzfast/configs/cpu_small.yaml on a CPU)")
    ap.add_argument("--quick", action="store_true", help="CPU-sized: convnext_atto, 64 px, batch 32, short windows")
    ap.add_argument("--what", default=None, help="comma list of loaders, synthetic, train, epoch (default: all four with "
                                                 "CUDA; without, all but epoch: three trainer epochs take long on a CPU)")
    ap.add_argument("--loaders", default=None, help=f"comma list of {', '.join(LOADERS)} (default: those usable here)")
    ap.add_argument("--batch-size", type=count(1), default=None, help="per process (default: the recipe's)")
    ap.add_argument("--image-size", type=count(16), default=None)
    ap.add_argument("--crop-size", type=count(1), default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--freeze-stages", type=count(0), default=None, help="default: 2 on a ConvNeXt (the study), else 0")
    ap.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", default=None, choices=["auto", "on", "off"])
    ap.add_argument("--workers", type=count(0), default=None)
    ap.add_argument("--warmup", type=count(0), default=10, help="batches excluded before timing")
    ap.add_argument("--batches", type=count(1), default=40, help="batches per timed window")
    ap.add_argument("--repeats", type=count(1), default=3, help="timed windows (per side); the median is reported")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--show-trainer", action="store_true", help="show the trainer's console during `epoch`")
    args = ap.parse_args(argv)
    if args.quick:  # CPU-sized defaults; flags given explicitly still win
        ap.set_defaults(model=args.model or "convnext_atto", image_size=args.image_size or 64,
                        batch_size=args.batch_size or 32, warmup=3, batches=10)
        args = ap.parse_args(argv)
    return args


def resolve(args, cuda: bool) -> TrainConfig:
    """The trainer's config for what is measured: the recipe (--config; else make run's on a CPU unless
    --quick), the benchmark's flags on top."""
    recipe = args.config or (None if cuda or args.quick else str(CPU_RECIPE))
    values = load_file(recipe) if recipe else {}
    args.recipe = recipe or ("--quick" if args.quick else "the trainer's defaults")
    for key in ("model", "image_size", "crop_size", "precision", "compile", "freeze_stages", "workers", "batch_size"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values.setdefault("freeze_stages", 2 if values.get("model", "convnext_small").startswith("convnext") else 0)
    values.update(shards=args.shards, out="unused", curriculum=None, epochs=1, pretrained=None)
    cfg = TrainConfig(**values).resolve(cuda)
    args.batch_size = cfg.batch_size  # one process: the per-process batch is the global one
    args.image_size = cfg.image_size
    return cfg


def ensure_shards(args) -> PackedSet:
    """--shards, or data/shards, made from the built-in synthetic set when it does not exist yet."""
    if args.shards is None:
        args.shards = DEFAULT_SHARDS
        if not (Path(DEFAULT_SHARDS) / "manifest.json").exists():
            print(f"no packed set at {DEFAULT_SHARDS}: making the built-in synthetic one (as `make shards` does)",
                  flush=True)
            for cmd in (["synth", "--out", "data/synthetic", "--n-train", "4000", "--n-test", "500", "--seed", "0"],
                        ["pack", "--data", "data/synthetic", "--out", DEFAULT_SHARDS]):
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
                if subprocess.run([sys.executable, "-m", "shard_tools", *cmd], env=env).returncode:
                    raise BenchmarkError(f"`python -m shard_tools {' '.join(cmd)}` failed (its message is above)")
    data = PackedSet.open(args.shards)
    args.shards = data.root  # absolute: the trainer of the `epoch` measurement runs from the repo root
    if not data.paths("train"):
        raise BenchmarkError(f"{args.shards} holds no training shards (the manifest lists none); pack a set with "
                             f"training images (make shards) or pass another --shards")
    return data


def choices(args, cuda: bool) -> tuple[list[str], set[str]]:
    names = args.loaders.split(",") if args.loaders else (["dali-gpu"] if cuda else []) + ["dali-cpu", "pil"]
    what = set((args.what or ("loaders,synthetic,train,epoch" if cuda else "loaders,synthetic,train")).split(","))
    unknown = [n for n in names if n not in LOADERS] + [w for w in what if w not in MEASUREMENTS]
    if unknown:
        raise BenchmarkError(f"unknown loader or measurement {', '.join(unknown)}: loaders are {', '.join(LOADERS)}; "
                             f"measurements {', '.join(MEASUREMENTS)}")
    return names, what


def prepare(args) -> tuple[list[str], set[str], PackedSet, TrainConfig]:
    """The loaders and measurements asked for, the packed set, and the recipe, checked to fit in memory
    before anything is allocated."""
    cuda = torch.cuda.is_available()
    names, what = choices(args, cuda)
    data = ensure_shards(args)
    cfg = resolve(args, cuda)
    if what & {"synthetic", "train", "epoch"}:
        print(check_fits(estimate_training_bytes(cfg, args.batch_size, cuda)), flush=True)
    return names, what, data, cfg


def run(args) -> tuple[list[dict], TrainConfig]:
    cuda = torch.cuda.is_available()
    names, what, data, cfg = prepare(args)
    paths = data.paths("train")
    training = build_training(cfg) if what & {"synthetic", "train"} else None
    args.device = training.device if training else (torch.device("cuda") if cuda else torch.device("cpu"))
    args.image_dtype = training.image_dtype if training else (torch.float16 if cuda else torch.float32)
    rows = []

    def add(row):
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)

    if "loaders" in what:
        for name in names:
            try:
                windows, builds, settings = loader_windows(args, cfg, name, paths)
            except LoaderError as exc:
                print(f"{name}: skipped ({exc})", flush=True)
                continue
            add({**summarize(name, "loader only", windows, builds), **settings})
    if training is not None:
        for row in step_rows(args, cfg, training, names, paths, what):
            add(row)
    if "epoch" in what:
        try:
            add(whole_epoch(args, cfg, names[0], echo=args.show_trainer))
        except LoaderError as exc:
            print(f"epoch: skipped ({exc})", flush=True)
    if not rows:
        raise BenchmarkError("nothing was measured (every measurement was skipped, reasons above); no result written")
    return rows, cfg


def step_rows(args, cfg: TrainConfig, training, names: list[str], paths: list[str], what: set[str]) -> list[dict]:
    """The step on synthetic tensors (the ceiling: every synthetic window) and, with `train`, fed by each
    loader, interleaved with synthetic windows of its own."""
    def step(batch):
        training_step(training.train_model, training.optimizer, training.accelerator, batch.images, batch.labels)

    label = f"train step ({cfg.model}, {cfg.precision}, {'compiled' if cfg.compile == 'on' else 'eager'})"
    synthetic = ceiling.synthetic_batch(args.batch_size, cfg.image_size, 37, training.device, training.image_dtype)
    training.train_model.train()
    t = time.perf_counter()
    ceiling.warm_up(step, synthetic, training.device, min_steps=args.warmup, min_s=1.0)  # compiles, on a GPU
    warmup_s = time.perf_counter() - t
    fed, windows = [], []
    for name in names if "train" in what else []:
        try:
            result = fed_against_ceiling(args, cfg, name, paths, step, synthetic)
        except LoaderError as exc:
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        windows += result.synthetic
        fed.append(fed_row(name, label, result, load_average()))
    if not windows:  # no loader fed the step: the ceiling alone
        windows = [ceiling.run_window(step, itertools.repeat(synthetic), args.batches, training.device)
                   for _ in range(args.repeats)]
    return [{**summarize("synthetic tensors", label, windows), "warmup_s": warmup_s}, *fed]


def write_results(args, cfg_dict: dict, rows: list[dict], prov: dict) -> Path:
    """epoch_time-<date>-<device>.json and .md under --out: new names only, never over an existing file."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--out {out} is a file, not a folder; pick another --out")
    device = (prov["gpu"] or f"cpu{os.cpu_count()}").replace(" ", "-")
    base = f"epoch_time-{time.strftime('%Y%m%d-%H%M%S')}-{device}"
    stem, k = out / base, 1
    while stem.with_suffix(".json").exists() or stem.with_suffix(".md").exists():
        k += 1
        stem = out / f"{base}-{k}"
    md = (f"# epoch_time {prov['date']}\n\nmachine: {prov['cpu']} ({prov['cpu_cores']} cores), GPU: {prov['gpu']}; "
          f"commit {prov['git_commit'][:10]}{' (dirty)' if prov['git_dirty'] else ''}; versions "
          f"{', '.join(f'{k} {v}' for k, v in prov['versions'].items())}\n\nrecipe: {args.recipe}; batch {args.batch_size}, "
          f"{cfg_dict['image_size']} px from a {cfg_dict['crop_size']} px crop, model {cfg_dict['model']} (stem + "
          f"{cfg_dict['freeze_stages']} stages frozen), {cfg_dict['precision']}, shards {args.shards}, "
          f"train-mode augmentation; of ceiling: interleaved windows, medians; load at the end "
          f"{load_average() or 0:.1f} runnable processes per core (above 1: other jobs shared the cores)\n\n{table(rows)}\n")
    write_atomic(stem.with_suffix(".json"), json.dumps({"provenance": prov, "results": rows}, indent=1) + "\n")
    write_atomic(stem.with_suffix(".md"), md)
    return stem


def measure(args) -> int:
    try:
        rows, cfg = run(args)
    except (ConfigError, LayoutError, ScheduleError) as exc:  # not UserErrors (yet): one line all the same
        raise BenchmarkError(str(exc)) from None
    plain = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in vars(args).items()}
    stem = write_results(args, cfg.to_dict(), rows, provenance(args=plain, config=cfg.to_dict()))
    print("\n" + table(rows))
    print(f"\nresults: {stem.with_suffix('.json')} and .md")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("epoch_time", lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
