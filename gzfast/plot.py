"""`python -m gzfast.plot RUN [RUN ...] [--out PNG]`: the study's Figure 2 for one or more runs.

Top left: training loss per epoch; top right: the same against wall time (where a curriculum saves its
time); bottom: validation RMSE per epoch. Curriculum stages are shaded, one colour per stage kind.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_COLOURS = {"high": "#d8ecd8", "high+medium": "#fbe9c8", "all": "#f2f2f2"}


def read_epochs(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run} a run folder?)")
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "epoch"]


def plot_runs(runs: list[Path], out: Path | None = None) -> Path:
    runs = [Path(r) for r in runs]
    if out is None:
        out = runs[0] / "curves.png" if len(runs) == 1 else runs[0].parent / "comparison.png"
    fig = plt.figure(figsize=(12, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2)
    ax_loss, ax_wall, ax_val = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    shaded = False
    for run in runs:
        epochs = read_epochs(run)
        if not epochs:
            continue
        x = [r["epoch"] for r in epochs]
        wall = []
        total = 0.0
        for r in epochs:
            total += r["epoch_time"]
            wall.append(total / 60)
        label = run.name
        line, = ax_loss.plot(x, [r["train_loss"] for r in epochs], marker="o", ms=3, label=label)
        ax_wall.plot(wall, [r["train_loss"] for r in epochs], marker="o", ms=3, color=line.get_color(), label=label)
        if any(r["val_rmse"] is not None for r in epochs):
            ax_val.plot(x, [r["val_rmse"] for r in epochs], marker="o", ms=3, color=line.get_color(), label=label)
        if not shaded:  # stages of the first run as background bands
            for r in epochs:
                colour = STAGE_COLOURS.get(r["stage"], "#e6e6f5")
                for ax in (ax_loss, ax_val):
                    ax.axvspan(r["epoch"] - 0.5, r["epoch"] + 0.5, color=colour, zorder=0, lw=0)
            shaded = True
    ax_loss.set(xlabel="epoch", ylabel="training loss (MSE)", title="training loss per epoch")
    ax_wall.set(xlabel="wall time (min)", ylabel="training loss (MSE)", title="training loss against wall time")
    ax_val.set(xlabel="epoch", ylabel="validation RMSE", title="validation RMSE (Kaggle metric)")
    from matplotlib.patches import Patch
    stage_handles = [Patch(color=c, label=f"stage: {s}") for s, c in STAGE_COLOURS.items()]
    for ax in (ax_loss, ax_wall, ax_val):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_val.legend(handles=ax_val.get_legend_handles_labels()[0] + stage_handles, fontsize=8, ncol=2)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gzfast.plot", description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the runs)")
    args = ap.parse_args(argv)
    print(plot_runs(args.runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
