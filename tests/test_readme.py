"""The README's commands cannot drift: CI calls its test command, and its main job runs (reduced)."""
import json
import re
import subprocess
import sys

import pytest

from helpers import REPO


def readme_commands() -> dict[str, str]:
    """The set-up commands of the README: indented lines `make X ...   # what it does`."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up commands", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0).split("#")[0].strip()
            for m in re.finditer(r"^    make (\w+)[^\n]*", section, re.M)}


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert {"test", "run"} <= set(commands), commands
    ci = (REPO / ".ci" / "run").read_text()
    assert commands["test"] in [line.strip() for line in ci.splitlines()]


@pytest.mark.slow
def test_main_job_runs_in_reduced_form(tmp_path):
    """`make run` as the README gives it, on a smaller synthetic set and fewer epochs, in this environment."""
    assert readme_commands()["run"] == "make run"
    run = tmp_path / "run"
    res = subprocess.run(
        ["make", "run", f"PY={sys.executable}", "INSTALL=", f"SYNTH={tmp_path / 'synth'}", f"OUT={tmp_path / 'shards'}",
         "N_TRAIN=240", "N_TEST=20", f"RUN_ARGS=--out {run} --epochs 3 --image-size 32 --no-plot"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "predict-the-training-mean RMSE" in res.stdout
    config = json.loads((run / "config.json").read_text())
    import yaml
    recipe = yaml.safe_load((REPO / "gzfast/configs/cpu_small.yaml").read_text())
    assert config["curriculum"] == "high:1,high+medium:1,all:1" and config["model"] == recipe["model"]
    epochs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    assert [r["stage"] for r in epochs if r["kind"] == "epoch"] == ["high", "high+medium", "all"]
    assert (tmp_path / "shards" / "manifest.json").exists()
