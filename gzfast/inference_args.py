"""The flags predict, embed and evaluate share, and the setup they make of them: the run loaded from its
checkpoint, the model on its device, the loader and the batch size, checked before anything is allocated.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from .config import auto_loader
from .inference import InferenceError, LoadedRun, Predictor, load_run
from .loaders import LOADERS
from .tta import VIEW_COUNTS, check_views

DEFAULT_CHUNK = 100_000


def add_inference_args(ap: argparse.ArgumentParser, what: str = "predictions"):
    """The flags of the model and how it runs. The model comes from `--run`; a group, so that another way
    to name a model (a `--model-dir` of exported weights) joins it as an alternative."""
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="run folder of gzfast/train.py (its --out)")
    model.add_argument("--model-dir", help="a folder written by python -m gzfast.export, in place of --run")
    ap.add_argument("--checkpoint", default=None, help="with --run: best (default), last, or a checkpoint path")
    ap.add_argument("--tta", type=int, default=8, metavar="K",
                    help=f"views whose {what} are averaged per galaxy, one of {', '.join(map(str, VIEW_COUNTS))} "
                         f"(default 8: four rotations x flip; 1 = centre crop only)")
    ap.add_argument("--loader", default="auto", help=f"auto (dali-gpu with CUDA, else pil), {', '.join(LOADERS)}")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's)")
    ap.add_argument("--workers", type=int, default=None,
                    help="decoding workers (the loader's, or the threads reading --images/--catalog). Default on a CPU: the "
                         "trainer's budget (pil: 0, decoding between batches so torch keeps every core)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on a GPU")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on with a GPU")
    ap.add_argument("--force", action="store_true",
                    help="use a checkpoint whose config differs from RUN/config.json (its own config is used)"
                         + ("; evaluate shards other than the ones the run was trained on" if what == "evaluation" else ""))


def add_source_args(ap: argparse.ArgumentParser, out_help: str):
    """What predict and embed read (one of --shards, --images, --catalog) and where they write."""
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shards", help="packed shards: OUT/test of a packed set (or OUT with --split)")
    src.add_argument("--catalog", help="a CSV or Parquet table of ids and image paths (no packing)")
    ap.add_argument("--images", help="a folder of images named <id>.jpg (no packing); with --catalog: the folder "
                                     "its image paths are relative to (default: the catalogue's folder)")
    ap.add_argument("--split", choices=("test", "val", "train"), default=None,
                    help="with --shards OUT: the split to read (default test)")
    ap.add_argument("--id-column", help="with --catalog: the id column (default: the run's tree's)")
    ap.add_argument("--file-column", help="with --catalog: the image-path column (default: the tree's; without "
                                          "one, <id>.jpg or <id>.png in the image folder)")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, metavar="N",
                    help=f"galaxies per chunk, each written as it completes; an interrupted command run again "
                         f"continues after the last complete chunk (default {DEFAULT_CHUNK:,})")
    ap.add_argument("--out", required=True, help=out_help)


@dataclass
class Setup:
    loaded: LoadedRun
    predictor: Predictor
    loader: str
    batch_size: int
    workers: int | None     # decoding threads (folder, catalogue) or loader workers (shards)


def memory_available(device: torch.device) -> int | None:
    """Bytes free for a batch on `device` (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return pages * os.sysconf("SC_PAGE_SIZE") if pages else None


def check_batch_fits(batch_size: int, image_size: int, device: torch.device):
    """Refuses, before allocating, a batch whose images alone (float32, the view being run and the batch it
    came from) exceed the memory free on the device: `--batch-size 10**12` is one line, not a traceback."""
    need = 2 * batch_size * 3 * image_size * image_size * 4
    free = memory_available(device)
    if free is not None and need > free:
        raise InferenceError(f"--batch-size {batch_size}: a batch of {batch_size:,} images of {image_size} px needs at "
                             f"least {need / 2**30:,.1f} GiB, and {device} has {free / 2**30:,.1f} GiB free; lower "
                             f"--batch-size")


def pick_loader(name: str) -> str:
    loader = auto_loader(torch.cuda.is_available())[0] if name == "auto" else name
    if loader not in LOADERS:
        raise InferenceError(f"--loader {loader}: choose auto or one of {', '.join(LOADERS)}")
    if loader == "dali-gpu" and not torch.cuda.is_available():
        raise InferenceError("--loader dali-gpu needs a CUDA GPU; on this machine use dali-cpu or pil")
    return loader


def load_model(args, device: torch.device | None) -> LoadedRun:
    """The model of `--run` (its checkpoint) or of `--model-dir` (an export)."""
    if args.model_dir is None:
        return load_run(args.run, args.checkpoint or "best", device, force=args.force)
    if args.checkpoint is not None:
        raise InferenceError(f"--checkpoint {args.checkpoint} with --model-dir: an export holds one set of weights; "
                             f"export another checkpoint with python -m gzfast.export --checkpoint")
    from .model_dir import load_model_dir
    return load_model_dir(args.model_dir, device)


def common_setup(args, device: torch.device | None = None, what: str = "outputs", announce: bool = True) -> Setup:
    """The run, its predictor, the loader and the batch size from the shared flags (checked first)."""
    try:
        check_views(args.tta)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    if args.batch_size is not None and args.batch_size < 1:
        raise InferenceError(f"--batch-size {args.batch_size} must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise InferenceError(f"--workers {args.workers} must be >= 0")
    loader = pick_loader(args.loader)
    loaded = load_model(args, device)
    predictor = Predictor(loaded, args.tta, args.precision, args.compile, what)
    batch_size = args.batch_size or loaded.cfg.batch_size
    check_batch_fits(batch_size, loaded.cfg.image_size, predictor.device)
    workers, cores = args.workers, ""
    if predictor.device.type == "cpu":  # the trainer's budget: decoding beside torch's threads starves them
        from .build import budget_cores
        threads, workers, _ = budget_cores(loader, args.workers, False, int(os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(threads)
        cores = f", torch {threads} thread(s) + {workers or 'no'} decoding worker(s)"
    cfg, data = loaded.cfg, loaded.data
    if announce:
        print(f"run {loaded.run}: {cfg.model} ({cfg.head} head, {data.tree.name} tree of {data.tree.n} answers), "
              f"{cfg.image_size} px from a {cfg.crop_size} px crop of {data.image_side} px images; checkpoint "
              f"{loaded.checkpoint} (epoch {loaded.epoch}); {predictor.device}{cores}, {predictor.precision}"
              f"{', compiled' if predictor.compiled else ''}, {loader}, batch {batch_size}, TTA {args.tta} view(s)",
              flush=True)
    return Setup(loaded, predictor, loader, batch_size, workers)
