"""Command line: `python -m shard_tools {synth,pack,verify,push} ...`."""
from __future__ import annotations

import argparse
import sys

from . import schema


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shard_tools", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic GZ2-like data set in the Kaggle layout")
    s.add_argument("--out", required=True)
    s.add_argument("--n-train", type=int, default=4000)
    s.add_argument("--n-test", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=_positive_int, default=None)

    p = sub.add_parser("pack", help="pack the Kaggle layout into tier-split webdataset shards")
    p.add_argument("--data", required=True, help="folder with training_solutions_rev1.csv and the image folders")
    p.add_argument("--out", default="data/shards")
    p.add_argument("--high", type=float, default=schema.HIGH, help="high tier: confidence > HIGH")
    p.add_argument("--low", type=float, default=schema.LOW, help="low tier: confidence < LOW")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--shard-size", type=int, default=500,
                   help="samples per shard (small shards let the loader interleave tiers finely)")
    p.add_argument("--tol", type=float, default=1e-4, help="decision-tree tolerance for a label row")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")

    v = sub.add_parser("verify", help="check a packed set against its manifest")
    v.add_argument("out")
    v.add_argument("--decode", action="store_true", help="also decode every JPEG")
    v.add_argument("--workers", type=_positive_int, default=None)

    u = sub.add_parser("push", help="upload a packed set to S3-compatible object storage (the manifest last)")
    u.add_argument("out", help="the local packed set")
    u.add_argument("url", help="s3://bucket/prefix (endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                               "AWS_SECRET_ACCESS_KEY)")

    args = ap.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{args.cmd}: error: interrupted; run the same command again to finish (finished work is kept)",
              file=sys.stderr)
        return 130


def _run(args) -> int:
    """Runs one subcommand; every anticipated failure ends as one line `cmd: error: what, where, what to do`
    and exit 2 (a traceback means a bug)."""
    from .catalog import CatalogError, readable
    from .layout import LayoutError
    from .pack import PackError
    from .synth import SynthError
    try:
        if args.cmd == "synth":
            from .synth import synthesize
            synthesize(args.out, args.n_train, args.n_test, args.seed, args.workers)
        elif args.cmd == "pack":
            from .pack import PackOptions, pack
            pack(args.data, args.out, PackOptions(args.high, args.low, args.val_fraction, args.shard_size, args.tol),
                 workers=args.workers)
        elif args.cmd == "verify":
            return _verify(args)
        elif args.cmd == "push":
            from .push import push
            files, size = push(args.out, args.url)
            print(f"push: {files} files ({size / 1e6:.1f} MB) uploaded to {args.url.rstrip('/')}, the manifest last")
    except (CatalogError, PackError, SynthError, LayoutError) as exc:
        print(f"{args.cmd}: error: {readable(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O failure no narrower handler named: still one line, with the path
        where = readable(str(exc.filename)) if exc.filename else "(no path)"
        print(f"{args.cmd}: error: {where}: {exc.strerror or exc}; fix the cause and run the command again",
              file=sys.stderr)
        return 2
    return 0


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
