"""Command line: `python -m shard_tools {synth,pack,verify,push} ...`."""
from __future__ import annotations

import argparse
import sys

from . import schema
from .errors import run_command
from .images import FITS
from .layout import IMAGE_SIDE


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _pack_parser(sub):
    p = sub.add_parser("pack", help="pack the Kaggle layout or any catalogue into tier-split webdataset shards")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="the Kaggle layout: training_solutions_rev1.csv and the two image folders")
    src.add_argument("--catalog", help="a catalogue (CSV or Parquet) of ids, image files and per-answer labels")
    p.add_argument("--images", help="with --catalog: the folder the catalogue's image paths are relative to")
    p.add_argument("--tree", help="decision tree: gz2-kaggle (default), gz2, gz-decals, or a YAML file")
    p.add_argument("--id-column", help="with --catalog: the id column (default: the tree's)")
    p.add_argument("--file-column", help="with --catalog: the image-file column (default: the tree's)")
    p.add_argument("--labels", choices=("counts", "fractions"),
                   help="with --catalog: read vote counts or fractions (default: counts when the tree's count "
                        "columns are present)")
    p.add_argument("--side", type=_positive_int, help=f"with --catalog: square side of the stored JPEGs (default "
                                                     f"{IMAGE_SIDE})")
    p.add_argument("--fit", choices=FITS, help="with --catalog: centre square crop then resize (default), or resize")
    p.add_argument("--out", default="data/shards")
    p.add_argument("--high", type=float, default=schema.HIGH, help="high tier: confidence > HIGH")
    p.add_argument("--low", type=float, default=schema.LOW, help="low tier: confidence < LOW")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--shard-size", type=int, default=500,
                   help="samples per shard (small shards let the loader interleave tiers finely)")
    p.add_argument("--tol", type=float, default=1e-4, help="decision-tree tolerance for a label row")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shard_tools", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic GZ2-like data set (Kaggle layout, or a catalogue)")
    s.add_argument("--out", required=True)
    s.add_argument("--layout", choices=("kaggle", "gz2", "ring-merger"), default="kaggle",
                   help="kaggle (default): the Kaggle layout; gz2: a GZ2-named catalogue of vote counts and mixed "
                        "images; ring-merger: a catalogue with string ids for docs/examples/ring-merger.yaml")
    s.add_argument("--n-train", type=int, default=4000, help="labelled galaxies (the catalogue's rows)")
    s.add_argument("--n-test", type=int, default=None, help="unlabelled test images (kaggle layout; default 500)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=_positive_int, default=None)

    _pack_parser(sub)

    v = sub.add_parser("verify", help="check a packed set against its manifest")
    v.add_argument("out")
    v.add_argument("--decode", action="store_true", help="also decode every JPEG")
    v.add_argument("--workers", type=_positive_int, default=None)

    u = sub.add_parser("push", help="upload a packed set to S3-compatible object storage (the manifest last)")
    u.add_argument("out", help="the local packed set")
    u.add_argument("url", help="s3://bucket/prefix (endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                               "AWS_SECRET_ACCESS_KEY)")

    args = ap.parse_args(argv)
    from .catalog import readable  # undecodable bytes in a path, shown as \xNN
    return run_command(args.cmd, lambda: _run(args), report=readable)


def _run(args) -> int:
    """Runs one subcommand; every anticipated failure is a UserError (one line `cmd: error: ...`, exit 2)."""
    if args.cmd == "synth":
        from .synth import synthesize
        synthesize(args.out, args.n_train, args.n_test, args.seed, args.workers, layout=args.layout)
    elif args.cmd == "pack":
        _pack(args)
    elif args.cmd == "verify":
        return _verify(args)
    elif args.cmd == "push":
        from .push import push
        files, size = push(args.out, args.url)
        print(f"push: {files} files ({size / 1e6:.1f} MB) uploaded to {args.url.rstrip('/')}, the manifest last")
    return 0


_CATALOG_ONLY = ("images", "id_column", "file_column", "labels", "side", "fit")


def _pack(args):
    from pathlib import Path

    from .pack import PackError, PackOptions, pack, pack_catalog
    opts = PackOptions(args.high, args.low, args.val_fraction, args.shard_size, args.tol)
    if args.data is not None:
        given = [f"--{k.replace('_', '-')}" for k in _CATALOG_ONLY if getattr(args, k) is not None]
        if given or args.tree not in (None, "gz2-kaggle"):
            raise PackError(f"{', '.join(given) or '--tree ' + args.tree}: only with --catalog; --data reads the Kaggle "
                            f"layout (gz2-kaggle tree, 424 px JPEGs kept as they are)")
        pack(args.data, args.out, opts, workers=args.workers)
        return
    from .trees import load_tree
    from .user_catalog import CatalogSpec
    if args.images is None:
        raise PackError("--catalog needs --images DIR, the folder its image paths are relative to")
    spec = CatalogSpec(Path(args.catalog), Path(args.images), load_tree(args.tree or "gz2-kaggle"), args.id_column,
                       args.file_column, args.labels, args.side or IMAGE_SIDE, args.fit or FITS[0])
    pack_catalog(spec, args.out, opts, workers=args.workers)


def _verify(args) -> int:
    from .verify import verify
    problems = verify(args.out, decode=args.decode, workers=args.workers)
    for line in problems:
        print(f"verify: {line}", file=sys.stderr)
    if problems:
        print(f"verify: {len(problems)} problem(s) in {args.out}", file=sys.stderr)
        return 1
    print(f"verify: {args.out} is sound" + (" (every JPEG decoded)" if args.decode else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
