"""`python -m gzfast.predict --run RUN (--shards OUT/test | --images DIR | --catalog FILE) --out FILE [--tta K]`:
a trained run's predictions for every galaxy of packed shards, a folder of images or a catalogue.

What it writes (Parquet when --out ends in .parquet, CSV otherwise):
- a gz2-kaggle run: Kaggle's submission, header `GalaxyID,Class1.1,...,Class11.6`, one row per galaxy
  sorted by GalaxyID, the cumulative vote fractions in [0, 1];
- a run of any other tree: the id column (as the set or the catalogue names it: dr7objid, iauname, ...)
  and one `<answer>_fraction` per answer: per-question fractions, the catalogues' convention (of the
  volunteers asked a question, the share giving that answer; each question sums to 1), rows in input
  order; a dirichlet run adds `<answer>_concentration`, the Dirichlet concentrations.
Every galaxy is predicted exactly once as the mean over K views (`gzfast.tta`) of the head's outputs; the
fractions come from that mean. Work goes in chunks (--chunk galaxies), each written as it completes: an
interrupted command run again continues after the last complete chunk. Files it cannot use are named on
stderr and listed in `<stem>.rejected.csv` (`<name>.rejected.csv` for Parquet). Under `accelerate launch` each process predicts its share
of the chunks; the output is the one a single process writes.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa
import torch

from shard_tools.errors import run_command
from shard_tools.schema import CSV_HEADER

from .inference import InferenceError
from .inference_args import add_inference_args, add_source_args, common_setup
from .job import Ranks, TableSpec, table_command
from .sources import check_source_args, open_source

PROG = "predict"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.predict", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(ap)
    add_source_args(ap, "the table to write: Kaggle's submission for gz2-kaggle runs, else per-question fractions "
                        "(+ concentrations for dirichlet runs); .parquet or .csv")
    return ap


def kaggle_table(ids: list, cumulative: np.ndarray) -> pa.Table:
    """The Kaggle format: GalaxyID, then the 37 cumulative fractions clipped to [0, 1], sorted by GalaxyID."""
    gids = np.asarray(ids, dtype=np.int64)
    if len(np.unique(gids)) != len(gids):
        dup = gids[np.flatnonzero(np.diff(np.sort(gids)) == 0)[0]]
        raise InferenceError(f"GalaxyID {dup} was predicted twice; the input holds a galaxy more than once")
    order = np.argsort(gids, kind="stable")
    values = np.clip(cumulative[order].astype(np.float64), 0.0, 1.0).astype(np.float32)
    columns = {CSV_HEADER[0]: pa.array(gids[order], pa.int64())}
    columns.update({c: pa.array(values[:, i]) for i, c in enumerate(CSV_HEADER[1:])})
    return pa.table(columns)


def tree_table(ids: list, id_column: str, id_type: pa.DataType, tree, cumulative: np.ndarray,
               concentrations: np.ndarray | None) -> pa.Table:
    """The id, `<answer>_fraction` (per question) and, for dirichlet runs, `<answer>_concentration`."""
    columns = {id_column: pa.array(ids, id_type)}
    per_question = tree.per_question(np.clip(cumulative.astype(np.float64), 0.0, 1.0)).astype(np.float32)
    columns.update({f"{c}_fraction": pa.array(per_question[:, i]) for i, c in enumerate(tree.columns)})
    if concentrations is not None:
        columns.update({f"{c}_concentration": pa.array(concentrations[:, i].astype(np.float32))
                        for i, c in enumerate(tree.columns)})
    return pa.table(columns)


def prediction_spec(setup, source) -> TableSpec:
    loaded, tree = setup.loaded, setup.loaded.tree
    dirichlet = loaded.cfg.head == "dirichlet"

    def cumulative(outputs: np.ndarray) -> np.ndarray:
        return setup.predictor.fractions(torch.from_numpy(outputs)).numpy()

    if loaded.data.kaggle:
        return TableSpec(PROG, lambda ids, out: kaggle_table(ids, cumulative(out)),
                         f"{tree.n} answers (cumulative vote fractions, Kaggle's submission)", CSV_HEADER[0])
    return TableSpec(PROG, lambda ids, out: tree_table(ids, source.id_column, source.id_type, tree, cumulative(out),
                                                       out if dirichlet else None),
                     f"{tree.n} answers (per-question fractions{' and Dirichlet concentrations' if dirichlet else ''})")


def predict(args) -> int:
    ranks = Ranks()
    check_source_args(args)  # before the model load: a slip in the flags costs nothing
    setup = common_setup(args, ranks.device, announce=ranks.main)
    source = open_source(args, setup)
    return table_command(args, prediction_spec(setup, source), setup, source, ranks)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
