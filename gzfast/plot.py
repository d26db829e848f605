"""`python -m gzfast.plot RUN [RUN ...] [--out PNG]`: the study's Figure 2 for one or more runs.

Top left: training loss per epoch; top right: the same against wall time (where a curriculum saves its
time); bottom: validation RMSE per epoch. Curriculum stages are shaded, one colour per stage kind.

Every run's records are read and checked before anything is drawn; the PNG is written atomically and carries
`Software: gzfast.plot` in its metadata, which is how a later plot knows the file at --out is its own: any
other existing file (an input, a run's file, somebody's picture) is refused, as is a folder or a link.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

from shard_tools.errors import UserError, run_command
from shard_tools.layout import atomic_path

from .run_records import read_epochs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_COLOURS = {"high": "#d8ecd8", "high+medium": "#fbe9c8", "all": "#f2f2f2"}
SOFTWARE = "gzfast.plot"  # the PNG text chunk that marks a figure as this command's


class PlotError(UserError, ValueError):
    """An --out that plot may not write; the message says what to give instead."""


def written_by_plot(path: Path) -> bool:
    """Whether `path` is a PNG whose metadata says this command wrote it."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.text.get("Software") == SOFTWARE
    except (OSError, ValueError, SyntaxError):  # not an image PIL can open
        return False


def check_out(out: Path):
    """Refuses an --out that is not a new path or a PNG this command wrote before."""
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise PlotError(f"--out {out}: {parent} is a file, not a folder; give a path in a folder")
    if out.is_symlink():
        raise PlotError(f"--out {out}: a link; plot writes only files of its own, give a new path")
    if out.is_dir():
        raise PlotError(f"--out {out}: a folder; give the path of a .png file (e.g. {out / 'curves.png'})")
    if out.suffix.lower() != ".png":
        raise PlotError(f"--out {out}: plot writes PNG figures; give a path ending in .png")
    if out.exists() and not written_by_plot(out):
        raise PlotError(f"--out {out}: an existing file that gzfast.plot did not write (no '{SOFTWARE}' in its PNG "
                        f"metadata); it is left alone, give a new path")


def plot_runs(runs: list[Path], out: Path | None = None) -> Path:
    """Draws the runs' curves into `out` (default RUN/curves.png for one run, comparison.png beside several)."""
    runs = [Path(r) for r in runs]
    if not runs:
        raise PlotError("no run given; pass one or more run folders")
    if out is None:
        out = runs[0] / "curves.png" if len(runs) == 1 else runs[0].parent / "comparison.png"
    out = Path(out)
    records = {run: read_epochs(run) for run in runs}  # every run checked before anything is drawn
    check_out(out)
    fig = plt.figure(figsize=(12, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2)
    ax_loss, ax_wall, ax_val = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    shaded = False
    for run, epochs in records.items():
        x = [r["epoch"] for r in epochs]
        wall = []
        total = 0.0
        for r in epochs:
            total += r["epoch_time"]
            wall.append(total / 60)
        label = run.resolve().name
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
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png", metadata={"Software": SOFTWARE})
    finally:
        plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gzfast.plot", description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the runs)")
    args = ap.parse_args(argv)
    return run_command("plot", lambda: print(plot_runs(args.runs, args.out)))


if __name__ == "__main__":
    raise SystemExit(main())
