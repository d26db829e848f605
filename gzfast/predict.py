"""`python -m gzfast.predict --run RUN (--shards OUT/test | --images DIR) --out submission.csv [--tta K]`:
a Kaggle submission from a trained run.

Every test galaxy is predicted exactly once (the eval loaders read each sample once and pad the last
batch; the count is checked against the shards' index), averaged over K views (`gzfast.tta`), and written
in the Kaggle format: header `GalaxyID,Class1.1,...,Class11.6`, one row per galaxy sorted by id, values
in [0, 1]. The file is written atomically. With `--images DIR` the JPEGs are read straight from a folder;
files it cannot use are listed on stderr and in `<out stem>.rejected.csv`, and counted in the last line.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from shard_tools.errors import run_command
from shard_tools.layout import PackedSet, is_remote, shard_info, write_atomic
from shard_tools.schema import CSV_HEADER

from .config import auto_loader
from .inference import InferenceError, Predictor, load_run, speed_line
from .loaders import LOADERS, make_loader
from .loaders.folder import ImageFolderBatches, eval_spec
from .tta import VIEW_COUNTS, check_views

PROG = "predict"


def test_shards(path: str | Path) -> list[str]:
    """The test shards of `--shards`: OUT/test (or OUT, the packed set's root) or a folder of test tars;
    on object storage s3://bucket/prefix or s3://bucket/prefix/test."""
    if is_remote(path):
        root = str(path).rstrip("/")
        root = root.removesuffix("/test")
        paths = PackedSet.open(root).paths("test")
        if not paths:
            raise InferenceError(f"--shards {path}: the packed set at {root} holds no test shards")
        return paths
    path = Path(path)
    if not path.is_dir():
        if path.name == "test" and (path.parent / "manifest.json").is_file():  # pack writes no test/ without test images
            raise InferenceError(f"--shards {path}: no test shards in {path.parent}, it was packed without test images "
                                 f"(images_test_rev1/); pack them, or predict a folder of JPEGs with --images DIR")
        raise InferenceError(f"--shards {path}: no such folder; pass OUT/test of a packed set (make shards)")
    root = path if (path / "manifest.json").is_file() else path.parent if (path.parent / "manifest.json").is_file() else None
    if root is not None:
        if root != path and path.name != "test":
            raise InferenceError(f"--shards {path}: the {path.name} folder of {root} holds no test shards "
                                 f"(they are labelled {path.name} data); pass {root / 'test'}")
        paths = PackedSet.open(root).paths("test")
        where = f"{root}/manifest.json"
    else:
        paths = sorted(str(p) for p in path.glob("*.tar"))
        where = str(path)
    if not paths:
        raise InferenceError(f"--shards {path}: no test shards in {where}; pack a set with test images "
                             f"(images_test_rev1/) or predict a folder of JPEGs with --images DIR")
    labelled = [p for p in paths if shard_info(p).labelled]
    if labelled:
        raise InferenceError(f"--shards {path}: {Path(labelled[0]).name} holds labelled (train/val) samples, "
                             f"not test shards; pass OUT/test, or use `python -m gzfast.evaluate` for labelled data")
    return paths


def submission_csv(ids: np.ndarray, preds: np.ndarray) -> str:
    """The Kaggle format: exact header, rows sorted by GalaxyID, values clipped to [0, 1]."""
    if len(np.unique(ids)) != len(ids):
        dup = ids[np.flatnonzero(np.diff(np.sort(ids)) == 0)[0]]
        raise InferenceError(f"GalaxyID {dup} was predicted twice; the input holds a galaxy more than once")
    order = np.argsort(ids, kind="stable")
    values = np.clip(preds[order].astype(np.float64), 0.0, 1.0)
    buf = io.StringIO()
    buf.write(",".join(CSV_HEADER) + "\n")
    for gid, row in zip(ids[order], values):
        buf.write(f"{int(gid)}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="run folder of gzfast/train.py (its --out)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="test shards: OUT/test of a packed set")
    src.add_argument("--images", help="a folder of 424x424 <GalaxyID>.jpg files (no packing)")
    ap.add_argument("--out", required=True, help="submission CSV to write")
    add_inference_args(ap)
    return ap


def add_inference_args(ap: argparse.ArgumentParser):
    """The flags predict and evaluate share."""
    ap.add_argument("--tta", type=int, default=8, metavar="K",
                    help=f"views averaged per galaxy, one of {', '.join(map(str, VIEW_COUNTS))} (default 8: four "
                         f"rotations x flip; 1 = centre crop only)")
    ap.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint path")
    ap.add_argument("--loader", default="auto", help=f"auto (dali-gpu with CUDA, else pil), {', '.join(LOADERS)}")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's)")
    ap.add_argument("--workers", type=int, default=None, help="loader threads")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on a GPU")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on with a GPU")


def common_setup(args):
    """(loaded run, predictor, loader name, batch size) from the flags predict and evaluate share."""
    try:
        check_views(args.tta)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    if args.batch_size is not None and args.batch_size < 1:
        raise InferenceError(f"--batch-size {args.batch_size} must be >= 1")
    loader = args.loader
    if loader == "auto":
        loader = auto_loader(torch.cuda.is_available())[0]
    if loader not in LOADERS:
        raise InferenceError(f"--loader {loader}: choose auto or one of {', '.join(LOADERS)}")
    if loader == "dali-gpu" and not torch.cuda.is_available():
        raise InferenceError("--loader dali-gpu needs a CUDA GPU; on this machine use dali-cpu or pil")
    loaded = load_run(args.run, args.checkpoint)
    predictor = Predictor(loaded, args.tta, args.precision, args.compile)
    batch_size = args.batch_size or loaded.cfg.batch_size
    cfg = loaded.cfg
    print(f"run {loaded.run}: {cfg.model} ({cfg.head} head), {cfg.image_size} px from a {cfg.crop_size} px crop; "
          f"checkpoint {loaded.checkpoint} (epoch {loaded.epoch}); {predictor.device}, {predictor.precision}"
          f"{', compiled' if predictor.compiled else ''}, {loader}, batch {batch_size}, TTA {args.tta} view(s)",
          flush=True)
    return loaded, predictor, loader, batch_size


def predict(args) -> int:
    loaded, predictor, loader_name, batch_size = common_setup(args)
    cfg = loaded.cfg
    rejected = []
    if args.shards:
        paths = test_shards(args.shards)
        expected = sum(shard_info(p).samples for p in paths)
        batches = make_loader(loader_name, paths, train=False, batch_size=batch_size, image_size=cfg.image_size,
                              crop_size=cfg.crop_size, workers=args.workers, device=predictor.device,
                              dtype=predictor.image_dtype, pad_last_batch=True)
    else:
        folder = Path(args.images)
        if not folder.is_dir():
            raise InferenceError(f"--images {folder}: no such folder; pass a folder of <GalaxyID>.jpg files")
        batches = ImageFolderBatches(folder, eval_spec(batch_size, cfg.image_size, cfg.crop_size, predictor.device,
                                                       predictor.image_dtype, args.workers))
        if not batches.files:
            raise InferenceError(f"--images {folder}: the folder holds no files")
        expected = None
    result = predictor.run(batches, desc="predict")
    if args.images:
        rejected = batches.rejected
        expected = len(batches.files) - len(rejected)
        for r in rejected:
            print(f"{PROG}: skipped {Path(args.images) / r.file}: {r.reason}", file=sys.stderr)
    if len(result.ids) != expected:
        raise InferenceError(f"predicted {len(result.ids)} galaxies, but the input holds {expected}; "
                             f"check the shards with `python -m shard_tools verify`")
    if expected == 0:
        raise InferenceError(f"--images {args.images}: no usable image (all {len(rejected)} files rejected)")
    out = Path(args.out)
    write_atomic(out, submission_csv(result.ids, result.preds))
    rejects_path = out.with_suffix(".rejected.csv")  # submission.csv -> submission.rejected.csv
    if rejected:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([("file", "reason"), *((r.file, r.reason) for r in rejected)])
        write_atomic(rejects_path, buf.getvalue())
    elif rejects_path.is_file() and rejects_path.read_text().startswith("file,reason\n"):
        rejects_path.unlink()  # ours, from an earlier pass over a folder that has been cleaned up since
    print(speed_line(result, args.tta))
    tail = f"; {len(rejected)} file(s) rejected, listed in {rejects_path}" if rejected else ""
    print(f"wrote {out}: {len(result.ids):,} galaxies x 37 answers{tail}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
