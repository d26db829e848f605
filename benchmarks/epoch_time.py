"""Epoch time, measured directly: loaders alone, the training step on synthetic tensors (the compute
ceiling), the training step fed by each loader, and one whole epoch through the trainer itself.

    python benchmarks/epoch_time.py [--shards data/shards] [--config FILE] [--quick] [--what ...] ...

Warm-up batches are excluded; every timed window lies inside one loader epoch (a pipeline build is never
inside a window; what a build costs is measured on its own, from the second build on, since the first
also pays for library start-up); the device is synchronized around every window; data wait and step time
are reported separately; each figure is the median of `--repeats` windows; every result file carries its
provenance (machine, GPU, versions, git commit, config). Results go to benchmarks/results/.

"data wait" is host time blocked on the loader. `dali-gpu` hands over batches whose GPU work may still
be queued, so a GPU-side stall shows up as step time instead: the honest measure of what a loader costs
is "of ceiling", the loader-fed rate as a fraction of the synthetic-input rate on the same step.
With no --shards and no data/shards, the built-in synthetic set is made first (as `make shards` does).
"""
from __future__ import annotations

import argparse
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

from benchmarks.provenance import provenance  # noqa: E402
from gzfast.build import budget_cores, build_training  # noqa: E402
from gzfast.config import ConfigError, TrainConfig, load_file  # noqa: E402
from gzfast.loaders import LOADERS, Batch, LoaderError, make_loader  # noqa: E402
from gzfast.train import training_step  # noqa: E402
from shard_tools.layout import LayoutError, PackedSet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY_EPOCH_IMAGES = 61_578  # the Kaggle training set
STUDY_EPOCH_SECONDS = 360    # the study: 6 minutes an epoch
DEFAULT_SHARDS = "data/shards"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- timing -----------------------------------------------------------------------------------------

def time_window(it, n_batches: int, step=None) -> dict:
    """Consumes `n_batches` from `it`: images/s, host time blocked on the loader, window length."""
    sync()
    images, wait = 0, 0.0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        t = time.perf_counter()
        b = next(it)
        wait += time.perf_counter() - t
        if step:
            step(b)
        images += len(b)
    sync()
    total = time.perf_counter() - t0
    return {"images_per_s": images / total, "data_wait_s": wait, "window_s": total}


def loader_windows(args, cfg: TrainConfig, name: str, paths: list[str], step=None) -> tuple[list[dict], list[float]]:
    """Per repeat, a fresh epoch's loader (build timed separately), warm-up, then one window inside it.
    Returns the windows and the build-to-first-batch times of the builds after the first."""
    windows, builds = [], []
    # the trainer's split of the cores between torch and this loader (the ceiling row gives torch all)
    torch_threads, workers, why = budget_cores(name, cfg.workers, torch.cuda.is_available())
    print(f"{name}: {why}", flush=True)
    all_threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(torch_threads)
    try:
        for r in range(args.repeats + 1):  # build 0 pays for library start-up: not a stage change
            windows_of_epoch(args, cfg, name, paths, step, r, workers, windows, builds)
    finally:
        torch.set_num_threads(all_threads)
    return windows, builds


def windows_of_epoch(args, cfg, name, paths, step, r, workers, windows, builds):
    """Epoch `r`: build (timed unless r == 0), warm up, then one timed window."""
    t = time.perf_counter()
    loader = make_loader(name, paths, train=True, batch_size=args.batch_size, image_size=cfg.image_size,
                         crop_size=cfg.crop_size, workers=workers, seed=0, epoch=r, device=args.device,
                         dtype=args.image_dtype)
    it = iter(loader)
    first = next(it)
    sync()
    if r:
        builds.append(time.perf_counter() - t)
    n = min(args.batches, len(loader) - 1 - args.warmup)
    if n < 1:
        raise LoaderError(f"an epoch of {len(loader)} batches leaves no window after {args.warmup} warm-up "
                          f"batches; use more shards or a smaller --batch-size/--warmup")
    if n < args.batches and r == 1:
        print(f"note: {name}: windows of {n} batches (an epoch has {len(loader)})", flush=True)
    for b in [first] + [next(it) for _ in range(args.warmup)]:
        if step:
            step(b)
    if r:
        windows.append(time_window(it, n, step))


class Synthetic:
    """Random normalized channels-last batches already on the device: the compute ceiling."""

    def __init__(self, batch_size: int, image_size: int, device, dtype):
        self.images = torch.randn(batch_size, 3, image_size, image_size, device=device,
                                  dtype=dtype).contiguous(memory_format=torch.channels_last)
        self.labels = torch.rand(batch_size, 37, device=device)
        self.ids = torch.zeros(batch_size, dtype=torch.int64)

    def __iter__(self):
        while True:
            yield Batch(self.images, self.labels, self.ids)


def synthetic_windows(args, step, device, dtype) -> list[dict]:
    it = iter(Synthetic(args.batch_size, args.image_size, device, dtype))
    for _ in range(args.warmup + 1):
        step(next(it))
    return [time_window(it, args.batches, step) for _ in range(args.repeats)]


def summarize(name: str, kind: str, windows: list[dict], builds=None, ceiling: float | None = None) -> dict:
    rate = statistics.median(w["images_per_s"] for w in windows)
    return {"what": kind, "loader": name, "images_per_s": rate,
            "spread": [min(w["images_per_s"] for w in windows), max(w["images_per_s"] for w in windows)],
            "data_wait_fraction": statistics.median(w["data_wait_s"] / w["window_s"] for w in windows),
            "of_ceiling": rate / ceiling if ceiling else None,
            "epoch_s_61578": STUDY_EPOCH_IMAGES / rate, "speedup_vs_study": STUDY_EPOCH_SECONDS / (STUDY_EPOCH_IMAGES / rate),
            "first_batch_s": statistics.median(builds) if builds else None}


def whole_epoch(args, cfg: TrainConfig, loader: str) -> dict:
    """Two epochs through the trainer itself (train + validation, as `make run` runs them), as a
    curriculum `high:1,all:1`: the second epoch is a whole epoch and a stage change, and its time is the
    epoch time (the first also pays for compilation and the first pipeline builds)."""
    with tempfile.TemporaryDirectory(prefix="epoch_time-") as tmp:
        run = Path(tmp) / "run"
        flags = {**{k: v for k, v in cfg.to_dict().items() if v is not None},
                 "shards": args.shards, "out": str(run), "loader": loader, "epochs": None, "curriculum": "high:1,all:1",
                 "batch_size": args.batch_size, "plot": False, "resume": False, "force": False}
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({k: v for k, v in flags.items() if v is not None}))
        res = subprocess.run([sys.executable, str(REPO / "gzfast" / "train.py"), "--config", str(config)],
                             cwd=REPO, capture_output=True, text=True)
        if res.returncode != 0:
            raise LoaderError(f"the trainer failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
        epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    second = epochs[-1]
    rate = second["images_per_s"]
    return {"what": f"whole epoch through the trainer (train + val, {second['samples']:,} images)", "loader": loader,
            "images_per_s": rate, "spread": [rate, rate], "data_wait_fraction": second["data_wait"] / second["epoch_time"],
            "of_ceiling": None, "epoch_s": second["epoch_time"], "first_epoch_s": epochs[0]["epoch_time"],
            "eval_s": second["eval_time"], "first_batch_wait_s": second["first_batch_wait"], "train_samples": second["samples"],
            "epoch_s_61578": STUDY_EPOCH_IMAGES / rate + second["eval_time"] * STUDY_EPOCH_IMAGES / max(second["samples"], 1),
            "speedup_vs_study": STUDY_EPOCH_SECONDS / (STUDY_EPOCH_IMAGES / rate), "first_batch_s": second["first_batch_wait"]}


def table(rows: list[dict]) -> str:
    head = ("| what | loader | images/s (median) | min-max | data wait | of ceiling | 61,578-image epoch | "
            "vs study's 6 min | pipeline build to first batch |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fb = f"{r['first_batch_s']:.2f} s" if r.get("first_batch_s") is not None else ""
        ceil = f"{100 * r['of_ceiling']:.0f} %" if r.get("of_ceiling") is not None else ""
        lines.append(f"| {r['what']} | {r['loader']} | {r['images_per_s']:,.0f} | {r['spread'][0]:,.0f}-{r['spread'][1]:,.0f} "
                     f"| {100 * r['data_wait_fraction']:.0f} % | {ceil} | {r['epoch_s_61578']:,.1f} s | "
                     f"{r['speedup_vs_study']:.1f}x | {fb} |")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help=f"packed set (default {DEFAULT_SHARDS}, made if missing)")
    ap.add_argument("--config", default=None, help="trainer config file (YAML/JSON) whose recipe to measure")
    ap.add_argument("--quick", action="store_true", help="CPU-sized: convnext_atto, 64 px, batch 32, short windows")
    ap.add_argument("--what", default=None, help="comma list of loaders, synthetic, train, epoch (default: all four with "
                                                 "CUDA; without, all but epoch: two trainer epochs take long on a CPU)")
    ap.add_argument("--loaders", default=None, help=f"comma list of {', '.join(LOADERS)} (default: those usable here)")
    ap.add_argument("--batch-size", type=int, default=None, help="per process (default: the trainer's, 512 on one GPU)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--crop-size", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--freeze-stages", type=int, default=None, help="default: 2 on a ConvNeXt (the study), else 0")
    ap.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", default=None, choices=["auto", "on", "off"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10, help="batches excluded before timing")
    ap.add_argument("--batches", type=int, default=40, help="batches per timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:  # CPU-sized defaults; flags given explicitly still win
        ap.set_defaults(model=args.model or "convnext_atto", image_size=args.image_size or 64,
                        batch_size=args.batch_size or 32, warmup=3, batches=10)
        args = ap.parse_args(argv)
    return args


def resolve(args) -> TrainConfig:
    """The trainer's config for what is measured: the file's recipe, the benchmark's flags on top."""
    values = load_file(args.config) if args.config else {}
    for key in ("model", "image_size", "crop_size", "precision", "compile", "freeze_stages", "workers"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values.setdefault("freeze_stages", 2 if values.get("model", "convnext_small").startswith("convnext") else 0)
    values.update(shards=args.shards, out="unused", curriculum=None, epochs=1, pretrained=None)
    cfg = TrainConfig(**values).resolve(torch.cuda.is_available())
    args.batch_size = args.batch_size or cfg.batch_size  # one process: the per-process batch is the global one
    cfg.batch_size = args.batch_size
    args.image_size = cfg.image_size
    return cfg


def ensure_shards(args):
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
                    raise LayoutError(f"`python -m shard_tools {' '.join(cmd)}` failed (its message is above)")
    data = PackedSet.open(args.shards)
    args.shards = data.root  # absolute: the trainer of the `epoch` measurement runs from the repo root
    return data


def run(args) -> tuple[list[dict], TrainConfig]:
    cuda = torch.cuda.is_available()
    names = args.loaders.split(",") if args.loaders else (["dali-gpu"] if cuda else []) + ["dali-cpu", "pil"]
    what = set((args.what or ("loaders,synthetic,train,epoch" if cuda else "loaders,synthetic,train")).split(","))
    unknown = [n for n in names if n not in LOADERS] + [w for w in what if w not in ("loaders", "synthetic", "train", "epoch")]
    if unknown:
        raise LoaderError(f"unknown loader or measurement {', '.join(unknown)}: loaders are {', '.join(LOADERS)}; "
                          f"measurements loaders, synthetic, train, epoch")
    data = ensure_shards(args)
    cfg = resolve(args)
    paths = data.paths("train")
    training = build_training(cfg) if what & {"synthetic", "train"} else None
    args.device = training.device if training else (torch.device("cuda") if cuda else torch.device("cpu"))
    args.image_dtype = training.image_dtype if training else (torch.float16 if cuda else torch.float32)

    def step(batch):
        training_step(training.train_model, training.optimizer, training.accelerator, batch.images, batch.labels)

    rows, label = [], f"train step ({cfg.model}, {cfg.precision}, {'compiled' if cfg.compile == 'on' else 'eager'})"

    def add(row):
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)

    if "loaders" in what:
        for name in names:
            try:
                windows, builds = loader_windows(args, cfg, name, paths)
            except LoaderError as exc:
                print(f"{name}: skipped ({exc})", flush=True)
                continue
            add(summarize(name, "loader only", windows, builds))
    ceiling = None
    if "synthetic" in what:
        row = summarize("synthetic tensors", label, synthetic_windows(args, step, training.device, training.image_dtype))
        ceiling = row["images_per_s"]
        add(row)
    if "train" in what:
        for name in names:
            try:
                windows, _ = loader_windows(args, cfg, name, paths, step)
            except LoaderError as exc:
                print(f"{name}: skipped ({exc})", flush=True)
                continue
            add(summarize(name, label, windows, ceiling=ceiling))
    if "epoch" in what:
        try:
            add(whole_epoch(args, cfg, names[0]))
        except LoaderError as exc:
            print(f"epoch: skipped ({exc})", flush=True)
    return rows, cfg


def write_results(args, cfg_dict: dict, rows: list[dict], prov: dict) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = (prov["gpu"] or f"cpu{os.cpu_count()}").replace(" ", "-")
    stem = out / f"epoch_time-{time.strftime('%Y%m%d-%H%M%S')}-{device}"
    stem.with_suffix(".json").write_text(json.dumps({"provenance": prov, "results": rows}, indent=1) + "\n")
    md = (f"# epoch_time {prov['date']}\n\nmachine: {prov['cpu']} ({prov['cpu_cores']} cores), GPU: {prov['gpu']}; "
          f"commit {prov['git_commit'][:10]}{' (dirty)' if prov['git_dirty'] else ''}; versions "
          f"{', '.join(f'{k} {v}' for k, v in prov['versions'].items())}\n\nconfig: batch {args.batch_size}, "
          f"{cfg_dict['image_size']} px from a {cfg_dict['crop_size']} px crop, model {cfg_dict['model']} (stem + "
          f"{cfg_dict['freeze_stages']} stages frozen), {cfg_dict['precision']}, shards {args.shards}, "
          f"train-mode augmentation\n\n{table(rows)}\n")
    stem.with_suffix(".md").write_text(md)
    return stem


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows, cfg = run(args)
    except (ConfigError, LayoutError, LoaderError) as exc:
        print(f"epoch_time: error: {exc}", file=sys.stderr)
        return 2
    stem = write_results(args, cfg.to_dict(), rows, provenance(args={k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                                                             for k, v in vars(args).items()}, config=cfg.to_dict()))
    print("\n" + table(rows))
    print(f"\nresults: {stem.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
