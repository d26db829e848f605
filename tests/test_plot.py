"""`python -m gzfast.plot`: the figure of one or several runs, written atomically and marked as plot's own; bad
runs and refused outputs as a table (one line, exit 2, no traceback, every file that existed byte-identical)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gzfast.plot import SOFTWARE, main, written_by_plot

from helpers import REPO


def epoch(n: int, stage: str = "all", **fields) -> dict:
    return {"kind": "epoch", "epoch": n, "stage": stage, "train_loss": 0.05 / n, "val_rmse": 0.2 / n,
            "epoch_time": 10.0 + n, **fields}


def make_run(folder: Path, lines: list) -> Path:
    """A run folder whose metrics.jsonl holds `lines` (records, or raw text for broken lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return folder


GOOD = [{"kind": "step", "epoch": 1, "step": 2, "loss": 0.1}, epoch(1, "high"), epoch(2), epoch(3)]


@pytest.mark.slow
def test_plot_marks_its_png_and_replaces_only_its_own(tmp_path, capsys):
    a, b = make_run(tmp_path / "runs" / "a", GOOD), make_run(tmp_path / "runs" / "b", GOOD[:2])
    assert main([str(a)]) == 0
    png = a / "curves.png"
    assert capsys.readouterr().out.strip() == str(png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.text["Software"] == SOFTWARE and im.size[0] > 1000
    assert main([str(a), str(b)]) == 0 and written_by_plot(tmp_path / "runs" / "comparison.png")
    first = png.stat().st_ino
    assert main([str(a), "--out", str(png)]) == 0  # its own figure: replaced (a new file renamed over it)
    assert png.stat().st_ino != first and written_by_plot(png)
    assert sorted(p.name for p in a.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp file left


def users_png(path: Path) -> Path:
    Image.new("RGB", (4, 4), "red").save(path)
    return path


def text(path: Path, content="hello\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# (case id, setup(tmp, good run) -> args, expected part of the message)
CASES = [
    ("run-missing", lambda t, r: [str(t / "nowhere")], "no such run folder"),
    ("run-is-a-file", lambda t, r: [str(text(t / "run.txt"))], "a file, not a run folder"),
    ("run-without-metrics", lambda t, r: [str(text(t / "r" / "config.json", "{}").parent)], "no metrics log"),
    ("metrics-empty", lambda t, r: [str(make_run(t / "r", []))], "empty"),
    ("metrics-truncated", lambda t, r: [str(make_run(t / "r", [epoch(1), '{"kind": "epoch", "epo']))],
     "line 2: not a JSON record"),
    ("metrics-not-records", lambda t, r: [str(make_run(t / "r", ["[1, 2, 3]"]))], 'no "kind" field'),
    ("record-without-fields", lambda t, r: [str(make_run(t / "r", [{"kind": "epoch", "epoch": 1}]))],
     "without stage, train_loss, val_rmse, epoch_time"),
    ("record-with-text-for-a-number", lambda t, r: [str(make_run(t / "r", [epoch(1, train_loss="low")]))],
     "train_loss is 'low', not a number"),
    ("only-step-records", lambda t, r: [str(make_run(t / "r", GOOD[:1]))], "no epoch has finished"),
    ("second-run-bad", lambda t, r: [str(r), str(t / "nowhere")], "no such run folder"),
    ("out-is-a-folder", lambda t, r: [str(r), "--out", str(r)], "a folder; give the path of a .png file"),
    ("out-is-an-input", lambda t, r: [str(r), "--out", str(r / "metrics.jsonl")], "ending in .png"),
    ("out-is-a-users-png", lambda t, r: [str(r), "--out", str(users_png(t / "mine.png"))], "gzfast.plot did not write"),
    ("out-is-a-run-file-named-png", lambda t, r: [str(r), "--out", str(text(r / "notes.png"))], "did not write"),
    ("out-under-a-file", lambda t, r: [str(r), "--out", str(text(t / "f") / "x.png")], "is a file, not a folder"),
    ("out-is-a-link", lambda t, r: os.symlink(t / "elsewhere.png", t / "link.png") or [str(r), "--out", str(t / "link.png")],
     "a link"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else os.readlink(p)
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("case, setup, message", CASES, ids=[c[0] for c in CASES])
def test_bad_plot_input_is_one_line_exit_2_and_touches_nothing(case, setup, message, tmp_path, capsys):
    good = make_run(tmp_path / "good", GOOD)
    args = setup(tmp_path, good)
    before = snapshot(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plot: error: ") and message in err[0], err
    assert snapshot(tmp_path) == before  # nothing written, nothing replaced, no temp file


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "gzfast.plot", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"plot: error: {tmp_path / 'nowhere'}: no such run folder; pass the --out "
                                               f"folder of a training run"]
