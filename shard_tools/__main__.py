"""Command line: `python -m shard_tools {synth,pack,verify} ...`."""
from __future__ import annotations

import argparse
import sys

from . import schema


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shard_tools", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic GZ2-like data set in the Kaggle layout")
    s.add_argument("--out", required=True)
    s.add_argument("--n-train", type=int, default=4000)
    s.add_argument("--n-test", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("pack", help="pack the Kaggle layout into tier-split webdataset shards")
    p.add_argument("--data", required=True, help="folder with training_solutions_rev1.csv and the image folders")
    p.add_argument("--out", default="data/shards")
    p.add_argument("--high", type=float, default=schema.HIGH, help="high tier: confidence > HIGH")
    p.add_argument("--low", type=float, default=schema.LOW, help="low tier: confidence < LOW")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--shard-size", type=int, default=500,
                   help="samples per shard (small shards let the loader interleave tiers finely)")
    p.add_argument("--tol", type=float, default=1e-4, help="decision-tree tolerance for a label row")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    v = sub.add_parser("verify", help="check a packed set against its manifest")
    v.add_argument("out")
    v.add_argument("--decode", action="store_true", help="also decode every JPEG")
    v.add_argument("--workers", type=int, default=None)

    args = ap.parse_args(argv)
    if args.cmd == "synth":
        from .synth import synthesize
        synthesize(args.out, args.n_train, args.n_test, args.seed, args.workers)
    elif args.cmd == "pack":
        from .catalog import CatalogError
        from .pack import PackOptions, pack
        try:
            pack(args.data, args.out, PackOptions(args.high, args.low, args.val_fraction, args.shard_size, args.tol),
                 workers=args.workers)
        except (CatalogError, ValueError) as exc:
            print(f"pack: error: {exc}", file=sys.stderr)
            return 2
    elif args.cmd == "verify":
        from .layout import LayoutError
        from .verify import verify
        try:
            problems = verify(args.out, decode=args.decode, workers=args.workers)
        except LayoutError as exc:
            print(f"verify: error: {exc}", file=sys.stderr)
            return 2
        for line in problems:
            print(f"verify: {line}", file=sys.stderr)
        if problems:
            print(f"verify: {len(problems)} problem(s) in {args.out}", file=sys.stderr)
            return 1
        print(f"verify: {args.out} is sound" + (" (every JPEG decoded)" if args.decode else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
