"""`python -m gzfast.evaluate --run RUN [--shards OUT] [--tta K] [--checkpoint best|last|PATH]`: where the
model is wrong, on the validation shards.

The Kaggle RMSE (`gzfast.metrics.rmse`, the one the trainer and the tests use) overall, per question, per
answer and per confidence tier (recomputed from the labels, DESIGN §1), each next to two baselines:
predicting the training mean for every galaxy, and predicting all zeros. Per-tier and per-question
figures recombine to the overall one (`metrics.pooled_rmse`, weighted by their counts); the report
carries the recombined values as a check. Outputs: console tables, `RUN/eval.json`, `RUN/eval.png`
(per-question RMSE bars against the baseline; predicted-vs-true density of the main answers), written
atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shard_tools import schema
from shard_tools.errors import run_command
from shard_tools.layout import PackedSet, atomic_path, write_atomic

from .inference import InferenceError, speed_line
from .loaders import make_loader
from .loaders.labels import read_labels
from .metrics import pooled_rmse, rmse
from .predict import add_inference_args, common_setup

PROG = "evaluate"
MODEL, MEAN, ZEROS = "model", "training mean", "all zeros"
# Answers drawn in eval.png: the first split of the tree and the answers most galaxies reach.
MAIN_ANSWERS = ("Class1.1", "Class1.2", "Class2.1", "Class4.1", "Class6.1", "Class7.1")


def eval_report(pred: np.ndarray, target: np.ndarray, train_mean: np.ndarray, high: float, low: float) -> dict:
    """Every figure of the evaluation, for the model and the two baselines. Counts are numbers of
    squared errors (rows x answers), so that `pooled_rmse` recombines parts into the whole."""
    n = len(target)
    candidates = {MODEL: pred, MEAN: np.broadcast_to(train_mean, target.shape), ZEROS: np.zeros_like(target)}

    def scores(rows=slice(None), cols=slice(None)) -> dict[str, float]:
        return {name: rmse(p[rows][:, cols], target[rows][:, cols]) for name, p in candidates.items()}

    tiers = schema.tier_of(schema.confidence(target), high, low) if n else np.array([], str)
    per_tier = {}
    for t in schema.TIERS:
        rows = np.flatnonzero(tiers == t)
        if len(rows):
            per_tier[t] = {"galaxies": int(len(rows)), "count": int(len(rows)) * 37, **scores(rows)}
    per_question = {f"Q{q.number}": {"text": q.text, "answers": [schema.COLUMNS[c] for c in q.columns],
                                     "count": n * len(q.columns), **scores(cols=list(q.columns))}
                    for q in schema.QUESTIONS}
    per_answer = {c: {"count": n, "mean_true": float(target[:, i].mean()), **scores(cols=[i])}
                  for i, c in enumerate(schema.COLUMNS)}
    overall = scores()
    recombined = {"from_tiers": pooled_rmse((v[MODEL], v["count"]) for v in per_tier.values()),
                  "from_questions": pooled_rmse((v[MODEL], v["count"]) for v in per_question.values()),
                  "from_answers": pooled_rmse((v[MODEL], v["count"]) for v in per_answer.values())}
    return {"galaxies": n, "rmse": overall, "per_question": per_question, "per_answer": per_answer,
            "per_tier": per_tier, "recombined": recombined, "thresholds": {"high": high, "low": low}}


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table: the first column left-aligned, the numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  " + "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    rule = "  " + "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([title, line(header), rule, *map(line, rows)])


def console_report(rep: dict) -> str:
    def trio(d):
        ratio = d[MODEL] / d[MEAN] if d[MEAN] else float("nan")
        return [f"{d[MODEL]:.5f}", f"{d[MEAN]:.5f}", f"{d[ZEROS]:.5f}", f"{ratio:.2f}"]
    cols = [MODEL, MEAN, ZEROS, "model/mean"]
    parts = [table(f"RMSE on {rep['galaxies']:,} validation galaxies (Kaggle metric)", ["", *cols],
                   [["overall", *trio(rep["rmse"])]])]
    parts.append(table("per question", ["question", "answers", *cols],
                       [[f"{k} {v['text']}", str(len(v["answers"])), *trio(v)] for k, v in rep["per_question"].items()]))
    parts.append(table(f"per confidence tier (high c > {rep['thresholds']['high']}, low c < {rep['thresholds']['low']})",
                       ["tier", "galaxies", *cols],
                       [[t, f"{v['galaxies']:,}", *trio(v)] for t, v in rep["per_tier"].items()]))
    parts.append(table("per answer", ["answer", "mean true", *cols],
                       [[c, f"{v['mean_true']:.3f}", *trio(v)] for c, v in rep["per_answer"].items()]))
    r = rep["recombined"]
    parts.append(f"recombined from tiers {r['from_tiers']:.5f}, from questions {r['from_questions']:.5f}, "
                 f"from answers {r['from_answers']:.5f} (overall {rep['rmse'][MODEL]:.5f})")
    return "\n\n".join(parts)


def plot_eval(rep: dict, pred: np.ndarray, target: np.ndarray, out: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig = plt.figure(figsize=(13, 8), constrained_layout=True)
    grid = fig.add_gridspec(2, len(MAIN_ANSWERS))
    ax = fig.add_subplot(grid[0, :])
    names = list(rep["per_question"])
    x = np.arange(len(names))
    for k, (who, colour) in enumerate([(MODEL, "#3b6ea8"), (MEAN, "#bbbbbb"), (ZEROS, "#e3c9a0")]):
        ax.bar(x + (k - 1) * 0.27, [rep["per_question"][q][who] for q in names], 0.27, label=who, color=colour)
    ax.set_xticks(x, [f"{q}\n{rep['per_question'][q]['text'][:18]}" for q in names], fontsize=7)
    ax.set(ylabel="RMSE", title=f"{title}: per-question RMSE (overall {rep['rmse'][MODEL]:.4f}, "
                                f"training mean {rep['rmse'][MEAN]:.4f})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    for k, name in enumerate(MAIN_ANSWERS):
        i = schema.COLUMNS.index(name)
        a = fig.add_subplot(grid[1, k])
        if len(target):
            a.hist2d(target[:, i], pred[:, i], bins=30, range=[[0, 1], [0, 1]], norm=LogNorm(), cmap="viridis")
        a.plot([0, 1], [0, 1], color="white", lw=0.8, ls="--")
        a.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="true", title=f"{name} (RMSE {rep['per_answer'][name][MODEL]:.3f})")
        if k == 0:
            a.set_ylabel("predicted")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="run folder of gzfast/train.py (its --out)")
    ap.add_argument("--shards", default=None, help="packed set with val shards (default: the run's --shards)")
    add_inference_args(ap)
    ap.add_argument("--no-plot", dest="plot", action="store_false", help="skip RUN/eval.png")
    return ap


def evaluate(args) -> int:
    loaded, predictor, loader_name, batch_size = common_setup(args)
    cfg = loaded.cfg
    root = args.shards or cfg.shards
    data = PackedSet.open(root)
    val, train = data.paths("val"), data.paths("train")
    if not val:
        raise InferenceError(f"--shards {root}: the packed set has no val shards; pack it with --val-fraction > 0")
    if not train:
        raise InferenceError(f"--shards {root}: no train shards, so no training mean for the baseline")
    _, train_labels = read_labels(train)
    batches = make_loader(loader_name, val, train=False, batch_size=batch_size, image_size=cfg.image_size,
                          crop_size=cfg.crop_size, workers=args.workers, device=predictor.device,
                          dtype=predictor.image_dtype, pad_last_batch=True)
    result = predictor.run(batches, desc="evaluate")
    expected = data.samples("val")
    if len(result.ids) != expected or len(np.unique(result.ids)) != expected:
        raise InferenceError(f"evaluated {len(result.ids)} rows ({len(np.unique(result.ids))} galaxies) of {expected} "
                             f"val samples; check the shards with `python -m shard_tools verify {root}`")
    rep = eval_report(result.preds, result.labels, train_labels.astype(np.float64).mean(axis=0),
                      data.thresholds["high"], data.thresholds["low"])
    rep.update({"run": str(loaded.run), "checkpoint": str(loaded.checkpoint), "checkpoint_epoch": loaded.epoch,
                "shards": str(data.root), "tta": args.tta, "loader": loader_name, "device": str(predictor.device),
                "precision": predictor.precision, "seconds": result.seconds,
                "galaxies_per_s": len(result.ids) / max(result.seconds, 1e-9)})
    print(console_report(rep))
    print(speed_line(result, args.tta))
    write_atomic(loaded.run / "eval.json", json.dumps(rep, indent=1) + "\n")
    print(f"wrote {loaded.run / 'eval.json'}")
    if args.plot:
        title = f"{loaded.run.name} ({cfg.model}, {cfg.head} head, TTA {args.tta})"
        print(f"wrote {plot_eval(rep, result.preds, result.labels, loaded.run / 'eval.png', title)}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
