"""`make gpu-check` in its dry form on the CPU: it runs end to end and prints the verdict table."""
import json
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_gpu_check_dry_form_runs_and_writes_a_verdict(synth_shards, tmp_path):
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--skip-tests", "--shards", str(synth_shards),
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "| check | target | measured | verdict |" in res.stdout and "Traceback" not in res.stderr
    [md] = tmp_path.glob("gpu_check-*.md")
    [js] = tmp_path.glob("gpu_check-*.json")
    verdict = {row[0]: row for row in json.loads(js.read_text())["verdict"]}
    assert verdict["pytest -m gpu"][3] == "skipped"
    fed = verdict["loader-fed compiled training"]
    assert fed[2].endswith("img/s)") and fed[3] == "n/a (no GPU)"  # measured on the CPU, judged only on a GPU
    assert "s (measured" in verdict["whole 61,578-image epoch incl. validation"][2]
    assert "dali-gpu loader alone" in md.read_text()
    [bench] = tmp_path.glob("epoch_time-*.json")
    rows = json.loads(bench.read_text())["results"]
    assert any(r["what"].startswith("whole epoch") and r["train_samples"] > 0 for r in rows)
