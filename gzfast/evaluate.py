"""`python -m gzfast.evaluate --run RUN [--shards OUT] [--tta K] [--checkpoint best|last|PATH] [--force]`: where
the model is wrong, on the validation shards of the set it was trained on.

The RMSE on cumulative vote fractions (`gzfast.metrics.rmse`, the one the trainer and the tests use;
comparable across losses) overall, per question and per answer (the run's tree's own names and texts)
and per confidence tier (recomputed from the labels), each next to two baselines: predicting the training
mean for every galaxy, and predicting all zeros. A dirichlet run also gets the per-question negative
log-likelihood of the vote counts. Per-tier and per-question figures recombine to the overall one
(`metrics.pooled_rmse`, weighted by their counts); the report carries the recombined values as a check.

The shards must be the ones the run was trained on (the checkpoint's data fingerprint; after a re-pack,
validation galaxies may have been trained on): others are refused unless --force. Outputs: console
tables, `RUN/eval.json` and `RUN/eval.png` (per-question RMSE bars against the baselines; predicted-vs-true
density of the main answers), written atomically, replacing only earlier ones of evaluate's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from shard_tools import schema
from shard_tools.errors import run_command
from shard_tools.layout import PackedSet, atomic_path, write_atomic
from shard_tools.trees import GZ2_KAGGLE

from .inference import InferenceError, speed_line
from .inference_args import add_inference_args, common_setup
from .loaders import make_loader
from .loaders.labels import read_labels
from .losses import dirichlet_multinomial_nll
from .metrics import pooled_rmse, rmse, tiers_of
from .outputs import EVAL_MARK, check_output

PROG = "evaluate"
MODEL, MEAN, ZEROS = "model", "training mean", "all zeros"
# Answers drawn in eval.png for gz2-kaggle: the first split of the tree and the answers most galaxies reach.
KAGGLE_MAIN = ("Class1.1", "Class1.2", "Class2.1", "Class4.1", "Class6.1", "Class7.1")


def main_answers(tree, target: np.ndarray, k: int = 6) -> list[str]:
    """The answers eval.png draws: gz2-kaggle's six, or the first question's answers and then the answers
    with the largest mean fraction."""
    if tree.columns == GZ2_KAGGLE.columns:
        return list(KAGGLE_MAIN)
    first = [tree.columns[c] for c in tree.questions[0].columns][: k // 2]
    mean = target.mean(axis=0) if len(target) else np.zeros(tree.n)
    rest = [tree.columns[i] for i in np.argsort(-mean, kind="stable") if tree.columns[i] not in first]
    return first + rest[: k - len(first)]


def eval_report(pred: np.ndarray, target: np.ndarray, train_mean: np.ndarray, high: float, low: float, tree=None,
                nll: np.ndarray | None = None) -> dict:
    """Every figure of the evaluation, for the model and the two baselines. Counts are numbers of
    squared errors (rows x answers), so that `pooled_rmse` recombines parts into the whole. `nll`: the
    per-galaxy, per-question negative log-likelihood of a dirichlet run (N×Q)."""
    tree = tree or GZ2_KAGGLE
    n = len(target)
    candidates = {MODEL: pred, MEAN: np.broadcast_to(train_mean, target.shape), ZEROS: np.zeros_like(target)}

    def scores(rows=slice(None), cols=slice(None)) -> dict[str, float]:
        return {name: rmse(p[rows][:, cols], target[rows][:, cols]) for name, p in candidates.items()}

    tiers = tiers_of(target, high, low, tree)
    per_tier = {}
    for t in schema.TIERS:
        rows = np.flatnonzero(tiers == t)
        if len(rows):
            per_tier[t] = {"galaxies": int(len(rows)), "count": int(len(rows)) * tree.n, **scores(rows)}
    per_question = {}
    for k, q in enumerate(tree.questions):
        per_question[q.name] = {"text": q.text, "answers": [tree.columns[c] for c in q.columns],
                                "count": n * len(q.columns), **scores(cols=list(q.columns))}
        if nll is not None:
            per_question[q.name]["nll"] = float(nll[:, k].mean()) if n else float("nan")
    per_answer = {c: {"question": tree.questions[tree.question_of[i]].name, "count": n,
                      "mean_true": float(target[:, i].mean()) if n else float("nan"), **scores(cols=[i])}
                  for i, c in enumerate(tree.columns)}
    overall = scores()
    recombined = {"from_tiers": pooled_rmse((v[MODEL], v["count"]) for v in per_tier.values()),
                  "from_questions": pooled_rmse((v[MODEL], v["count"]) for v in per_question.values()),
                  "from_answers": pooled_rmse((v[MODEL], v["count"]) for v in per_answer.values())}
    report = {"command": PROG, "galaxies": n, "tree": tree.name, "rmse": overall, "per_question": per_question,
              "per_answer": per_answer, "per_tier": per_tier, "recombined": recombined,
              "thresholds": {"high": high, "low": low}}
    if nll is not None:
        report["nll"] = float(nll.sum(axis=1).mean()) if n else float("nan")
    return report


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
    nll = "nll" in rep
    parts = [table(f"RMSE on {rep['galaxies']:,} validation galaxies (cumulative vote fractions, {rep['tree']} tree)",
                   ["", *cols], [["overall", *trio(rep["rmse"])]])]
    parts.append(table("per question", ["question", "answers", *cols, *(["NLL"] if nll else [])],
                       [[f"{k} {v['text']}", str(len(v["answers"])), *trio(v), *([f"{v['nll']:.4f}"] if nll else [])]
                        for k, v in rep["per_question"].items()]))
    parts.append(table(f"per confidence tier (high c > {rep['thresholds']['high']}, low c < {rep['thresholds']['low']})",
                       ["tier", "galaxies", *cols],
                       [[t, f"{v['galaxies']:,}", *trio(v)] for t, v in rep["per_tier"].items()]))
    parts.append(table("per answer", ["answer", "mean true", *cols],
                       [[c, f"{v['mean_true']:.3f}", *trio(v)] for c, v in rep["per_answer"].items()]))
    r = rep["recombined"]
    parts.append(f"recombined from tiers {r['from_tiers']:.5f}, from questions {r['from_questions']:.5f}, "
                 f"from answers {r['from_answers']:.5f} (overall {rep['rmse'][MODEL]:.5f})")
    if nll:
        parts.append(f"Dirichlet-multinomial NLL of the vote counts: {rep['nll']:.4f} per galaxy (summed over questions)")
    return "\n\n".join(parts)


def plot_eval(rep: dict, pred: np.ndarray, target: np.ndarray, out: Path, title: str, tree=None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    tree = tree or GZ2_KAGGLE
    answers = main_answers(tree, target)
    fig = plt.figure(figsize=(13, 8), constrained_layout=True)
    grid = fig.add_gridspec(2, len(answers))
    ax = fig.add_subplot(grid[0, :])
    names = list(rep["per_question"])
    x = np.arange(len(names))
    for k, (who, colour) in enumerate([(MODEL, "#3b6ea8"), (MEAN, "#bbbbbb"), (ZEROS, "#e3c9a0")]):
        ax.bar(x + (k - 1) * 0.27, [rep["per_question"][q][who] for q in names], 0.27, label=who, color=colour)
    ax.set_xticks(x, [f"{q[:14]}\n{rep['per_question'][q]['text'][:18]}" for q in names], fontsize=7)
    ax.set(ylabel="RMSE", title=f"{title}: per-question RMSE (overall {rep['rmse'][MODEL]:.4f}, "
                                f"training mean {rep['rmse'][MEAN]:.4f})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    for k, name in enumerate(answers):
        i = tree.columns.index(name)
        a = fig.add_subplot(grid[1, k])
        if len(target):
            a.hist2d(target[:, i], pred[:, i], bins=30, range=[[0, 1], [0, 1]], norm=LogNorm(), cmap="viridis")
        a.plot([0, 1], [0, 1], color="white", lw=0.8, ls="--")
        a.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="true",
              title=f"{name[-16:]} (RMSE {rep['per_answer'][name][MODEL]:.3f})")
        if k == 0:
            a.set_ylabel("predicted")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Description": EVAL_MARK})
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.evaluate", description=__doc__.split("\n\n")[0])
    add_inference_args(ap, what="predictions")
    ap.add_argument("--shards", default=None, help="packed set with val shards (default with --run: the run's "
                                                  "--shards; needed with --model-dir)")
    ap.add_argument("--no-plot", dest="plot", action="store_false",
                    help="skip eval.png (eval.json and eval.png go into the --run or --model-dir folder)")
    return ap


def open_val_set(root: str, loaded, force: bool) -> PackedSet:
    """The packed set to evaluate on, checked against the run: its tree, its image side, its fingerprint
    (unless --force), and its val and train shards against the manifest."""
    data = PackedSet.open(root)
    if data.tree.columns != loaded.tree.columns:
        raise InferenceError(f"--shards {root}: packed for the {data.tree.name} tree ({data.tree.n} answers), the run "
                             f"was trained on the {loaded.tree.name} tree ({loaded.tree.n}); pass the run's shards")
    if data.image_side != loaded.data.image_side:
        raise InferenceError(f"--shards {root}: {data.image_side} px images, the run was trained on "
                             f"{loaded.data.image_side} px ones; pass the run's shards")
    val, train = data.paths("val"), data.paths("train")
    if not val:
        raise InferenceError(f"--shards {root}: the packed set has no val shards; pack it with --val-fraction > 0")
    if not train:
        raise InferenceError(f"--shards {root}: no train shards, so no training mean for the baseline")
    if loaded.data_fingerprint is not None and data.fingerprint != loaded.data_fingerprint and not force:
        raise InferenceError(f"--shards {root}: not the shards {loaded.checkpoint} was trained on (their fingerprint "
                             f"differs: another set, or a re-pack, after which val galaxies may have been trained "
                             f"on); pass the run's shards, or --force to evaluate anyway")
    problems = data.problems(data.select("val") + data.select("train"))
    if problems:
        raise InferenceError(f"{len(problems)} problem(s) in the shards of {root}, first: {problems[0]}; "
                             f"`python -m shard_tools verify {root}` lists them, re-running pack repairs them")
    return data


def evaluate(args) -> int:
    if args.model_dir is not None and args.shards is None:  # the path an export records is the training machine's
        raise InferenceError("--model-dir needs --shards: the packed set with val shards to evaluate on")
    setup = common_setup(args)
    loaded, predictor, cfg, tree = setup.loaded, setup.predictor, setup.loaded.cfg, setup.loaded.tree
    out_json, out_png = loaded.run / "eval.json", loaded.run / "eval.png"
    root = args.shards or cfg.shards
    data = open_val_set(root, loaded, args.force)
    inputs = [] if data.remote else [*data.paths("val"), *data.paths("train"), loaded.checkpoint]
    check_output(out_json, PROG, "the report", inputs=inputs)
    if args.plot:
        check_output(out_png, PROG, "the figure", inputs=inputs)
    dirichlet = cfg.head == "dirichlet" and data.has_counts
    _, train_labels = read_labels(data.paths("train"), tree.n)
    batches = make_loader(setup.loader, data.paths("val"), train=False, batch_size=setup.batch_size,
                          image_size=cfg.image_size, crop_size=cfg.crop_size, workers=setup.workers,
                          device=predictor.device, dtype=predictor.image_dtype, pad_last_batch=True,
                          source_side=data.image_side, label_count=tree.n, has_counts=dirichlet)
    result = predictor.run(batches, desc="evaluate")
    expected = data.samples("val")
    if len(result.ids) != expected or len(np.unique(result.ids)) != expected:
        raise InferenceError(f"evaluated {len(result.ids)} rows ({len(np.unique(result.ids))} galaxies) of {expected} "
                             f"val samples; check the shards with `python -m shard_tools verify {root}`")
    outputs = torch.from_numpy(result.preds)
    fractions = predictor.fractions(outputs).numpy()
    nll = dirichlet_multinomial_nll(outputs, torch.from_numpy(result.counts), tree).numpy() if dirichlet else None
    rep = eval_report(fractions, result.labels, train_labels.astype(np.float64).mean(axis=0),
                      data.thresholds["high"], data.thresholds["low"], tree, nll)
    rep.update({"run": str(loaded.run), "checkpoint": str(loaded.checkpoint), "checkpoint_epoch": loaded.epoch,
                "shards": str(data.root), "tta": args.tta, "loader": setup.loader, "device": str(predictor.device),
                "precision": predictor.precision, "seconds": result.seconds,
                "galaxies_per_s": len(result.ids) / max(result.seconds, 1e-9)})
    print(console_report(rep))
    print(speed_line(len(result.ids), result.seconds, args.tta, result.steady_per_s))
    write_atomic(out_json, json.dumps(rep, indent=1) + "\n")
    print(f"wrote {out_json}")
    if args.plot:
        title = f"{loaded.run.name} ({cfg.model}, {cfg.head} head, TTA {args.tta})"
        print(f"wrote {plot_eval(rep, fractions, result.labels, out_png, title, tree)}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
