"""`python -m gzfast.embed --run RUN (--shards DIR | --images DIR | --catalog FILE) --out feats.parquet [--tta K]`:
the backbone's pooled features of every galaxy, for similarity search, clustering or a new head.

Per galaxy: timm's `forward_features` then `forward_head(..., pre_logits=True)` (768 numbers for
`convnext_small`, 512 for `resnet10t`), the mean over the K views (`gzfast.tta`; with K = 8 the dihedral
views, so an image and its 90-degree rotation get the same features up to the JPEG's rounding). Stored
as columns `feat_000`, `feat_001`, ... (float32) after the id column, rows in input order; Parquet when
--out ends in .parquet, CSV otherwise. Chunks, resuming, rejected files and several processes work as in
`gzfast.predict` (one implementation: `gzfast.job`).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa

from shard_tools.errors import run_command

from .inference_args import add_inference_args, add_source_args, common_setup
from .job import Ranks, TableSpec, table_command
from .sources import check_source_args, open_source

PROG = "embed"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.embed", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(ap, what="features")
    add_source_args(ap, "the table to write: the id and feat_000, feat_001, ... per galaxy; .parquet or .csv")
    return ap


def feature_columns(width: int) -> list[str]:
    digits = max(3, len(str(width - 1)))
    return [f"feat_{i:0{digits}d}" for i in range(width)]


def feature_table(ids: list, id_column: str, id_type: pa.DataType, features: np.ndarray) -> pa.Table:
    columns = {id_column: pa.array(ids, id_type)}
    values = features.astype(np.float32)
    columns.update({name: pa.array(values[:, i]) for i, name in enumerate(feature_columns(values.shape[1]))})
    return pa.table(columns)


def embed(args) -> int:
    ranks = Ranks()
    check_source_args(args)  # before the model load: a slip in the flags costs nothing
    setup = common_setup(args, ranks.device, what="features", announce=ranks.main)
    source = open_source(args, setup)
    width = setup.predictor.width
    spec = TableSpec(PROG, lambda ids, feats: feature_table(ids, source.id_column, source.id_type, feats),
                     f"{width} features (the backbone's pooled features, feat_000..)")
    return table_command(args, spec, setup, source, ranks)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: embed(args))


if __name__ == "__main__":
    sys.exit(main())
