"""Epoch time, measured directly: loaders alone, the training step on synthetic tensors (the compute
ceiling), and the training step fed by each loader, side by side in one table.

    python benchmarks/epoch_time.py [--shards data/shards] [--quick] [--loaders dali-gpu,pil] ...

Warm-up batches are excluded, the device is synchronized around every timed window, data-wait and step
time are reported separately, each figure is the median of `--repeats` windows, and every result file
carries its provenance (machine, GPU, versions, git commit, config). Results go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gzfast.curriculum import split_shards  # noqa: E402
from gzfast.data import LOADERS, LoaderError, make_loader  # noqa: E402
from shard_tools.pack import load_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY_EPOCH_IMAGES = 61_578  # the Kaggle training set
STUDY_EPOCH_SECONDS = 360    # the study: 6 minutes an epoch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def provenance(args) -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("timm", "accelerate", "webdataset", "nvidia.dali"):
        try:
            versions[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception as exc:  # noqa: BLE001 - report, don't fail, on a missing optional package
            versions[mod] = f"unavailable ({type(exc).__name__})"
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpu": cpu,
            "cpu_cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions, "git_commit": run(["git", "rev-parse", "HEAD"]),
            "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])), "config": vars(args)}


def timed_windows(batches, n_warmup: int, n_batches: int, repeats: int, step=None) -> list[dict]:
    """Consumes warm-up + repeats×n_batches batches; per window: images/s, data wait, step time."""
    it = iter(batches)
    for _ in range(n_warmup):
        b = next(it)
        if step:
            step(b)
    sync()
    out = []
    for _ in range(repeats):
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
        out.append({"images_per_s": images / total, "data_wait_s": wait, "window_s": total})
    return out


def loader_batches(args, name: str, paths: list[str]):
    """An endless stream of train-mode batches, epoch after epoch (each epoch a fresh pipeline)."""
    epoch = 0
    while True:
        yield from make_loader(name, paths, train=True, batch_size=args.batch_size, image_size=args.image_size,
                               crop_size=args.crop_size, workers=args.workers, seed=0, epoch=epoch)
        epoch += 1


def build_step(args):
    """The trainer's own step (gzfast.train.training_step) on the trainer's model setup."""
    from accelerate import Accelerator
    from gzfast.model import GZ2Model, freeze, param_groups
    from gzfast.train import training_step

    cuda = torch.cuda.is_available()
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not cuda)
    model = GZ2Model(args.model)
    freeze(model, args.freeze_stages)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, 1e-4, 5e-4, 1e-4))
    compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    model, opt = acc.prepare(torch.compile(model) if compile_on else model, opt)

    def step(batch):
        images = batch.images.to(acc.device, non_blocking=True)
        labels = batch.labels.to(acc.device, non_blocking=True)
        training_step(model, opt, acc, images, labels)
    return step, acc.device, precision, compile_on


class Synthetic:
    """Random normalized channels-last batches already on the device: the compute ceiling."""

    def __init__(self, args, device):
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device,
                                  dtype=dtype).contiguous(memory_format=torch.channels_last)
        self.labels = torch.rand(args.batch_size, 37, device=device)

    def __iter__(self):
        from gzfast.data import Batch
        while True:
            yield Batch(self.images, self.labels, torch.zeros(len(self.labels), dtype=torch.int64))


def summarize(name: str, kind: str, windows: list[dict], first_batch_s: float | None = None) -> dict:
    rate = statistics.median(w["images_per_s"] for w in windows)
    wait = statistics.median(w["data_wait_s"] / w["window_s"] for w in windows)
    return {"what": kind, "loader": name, "images_per_s": rate,
            "spread": [min(w["images_per_s"] for w in windows), max(w["images_per_s"] for w in windows)],
            "data_wait_fraction": wait, "epoch_s_61578": STUDY_EPOCH_IMAGES / rate,
            "speedup_vs_study": STUDY_EPOCH_SECONDS / (STUDY_EPOCH_IMAGES / rate),
            "first_batch_s": first_batch_s}


def first_batch_seconds(args, name, paths) -> float:
    """What a curriculum stage change costs: a new pipeline up to its first batch."""
    t = time.perf_counter()
    loader = make_loader(name, paths, train=True, batch_size=args.batch_size, image_size=args.image_size,
                         crop_size=args.crop_size, workers=args.workers, seed=0, epoch=99)
    it = iter(loader)
    next(it)
    sync()
    took = time.perf_counter() - t
    del it, loader
    return took


def table(rows: list[dict]) -> str:
    head = ("| what | loader | images/s (median) | min-max | data wait | 61,578-image epoch | vs study's 6 min | "
            "pipeline build to first batch |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fb = f"{r['first_batch_s']:.2f} s" if r.get("first_batch_s") is not None else ""
        lines.append(f"| {r['what']} | {r['loader']} | {r['images_per_s']:,.0f} | {r['spread'][0]:,.0f}-{r['spread'][1]:,.0f} "
                     f"| {100 * r['data_wait_fraction']:.0f} % | {r['epoch_s_61578']:,.1f} s | {r['speedup_vs_study']:.1f}x | {fb} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--quick", action="store_true", help="CPU-sized: convnext_atto, 64 px, batch 32, short windows")
    ap.add_argument("--what", default="loaders,synthetic,train", help="comma list of loaders, synthetic, train")
    ap.add_argument("--loaders", default=None, help=f"comma list of {', '.join(LOADERS)} (default: those usable here)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--crop-size", type=int, default=212)
    ap.add_argument("--model", default="convnext_small")
    ap.add_argument("--freeze-stages", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10, help="batches excluded before timing")
    ap.add_argument("--batches", type=int, default=40, help="batches per timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:  # CPU-sized defaults; flags given explicitly still win
        ap.set_defaults(model="convnext_atto", image_size=64, batch_size=32, warmup=3, batches=10)
        args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    names = args.loaders.split(",") if args.loaders else (["dali-gpu"] if cuda else []) + ["dali-cpu", "pil"]
    what = set(args.what.split(","))
    manifest = load_manifest(args.shards)
    manifest["root"] = args.shards
    paths = split_shards(manifest, "train")

    rows = []
    if "loaders" in what:
        for name in names:
            try:
                fb = first_batch_seconds(args, name, paths)
                windows = timed_windows(loader_batches(args, name, paths), args.warmup, args.batches, args.repeats)
            except LoaderError as exc:
                print(f"{name}: skipped ({exc})")
                continue
            rows.append(summarize(name, "loader only", windows, fb))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if what & {"synthetic", "train"}:
        step, device, precision, compiled = build_step(args)
        label = f"train step ({args.model}, {precision}, {'compiled' if compiled else 'eager'})"
        if "synthetic" in what:
            windows = timed_windows(Synthetic(args, device), args.warmup, args.batches, args.repeats, step)
            rows.append(summarize("synthetic tensors", label, windows))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if "train" in what:
            for name in names:
                try:
                    windows = timed_windows(loader_batches(args, name, paths), args.warmup, args.batches,
                                            args.repeats, step)
                except LoaderError as exc:
                    print(f"{name}: skipped ({exc})")
                    continue
                rows.append(summarize(name, label, windows))
                print(table(rows[-1:]).splitlines()[-1], flush=True)

    result = {"provenance": provenance(args), "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = (result["provenance"]["gpu"] or f"cpu{os.cpu_count()}").replace(" ", "-")
    stem = out / f"epoch_time-{time.strftime('%Y%m%d-%H%M%S')}-{device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    prov = result["provenance"]
    md = (f"# epoch_time {prov['date']}\n\nmachine: {prov['cpu']} ({prov['cpu_cores']} cores), GPU: {prov['gpu']}; "
          f"commit {prov['git_commit'][:10]}{' (dirty)' if prov['git_dirty'] else ''}; versions "
          f"{', '.join(f'{k} {v}' for k, v in prov['versions'].items())}\n\nconfig: batch {args.batch_size}, "
          f"{args.image_size} px from a {args.crop_size} px crop, model {args.model} (stem + {args.freeze_stages} "
          f"stages frozen), train-mode augmentation\n\n{table(rows)}\n")
    stem.with_suffix(".md").write_text(md)
    print("\n" + table(rows))
    print(f"\nresults: {stem.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
