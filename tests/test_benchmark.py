"""benchmarks/epoch_time.py runs end to end (tiny windows; speed itself is recorded, not asserted)."""
import json
import subprocess
import sys

from helpers import REPO


def test_epoch_time_writes_a_table_with_provenance(synth_shards, tmp_path):
    res = subprocess.run(
        [sys.executable, "benchmarks/epoch_time.py", "--shards", str(synth_shards), "--quick", "--image-size", "32",
         "--batch-size", "8", "--warmup", "1", "--batches", "2", "--repeats", "2", "--workers", "1",
         "--loaders", "dali-cpu,pil", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    [path] = tmp_path.glob("epoch_time-*.json")
    result = json.loads(path.read_text())
    rows = result["results"]
    assert [(r["what"].split(" (")[0], r["loader"]) for r in rows] == [
        ("loader only", "dali-cpu"), ("loader only", "pil"), ("train step", "synthetic tensors"),
        ("train step", "dali-cpu"), ("train step", "pil")]
    for r in rows:
        assert r["images_per_s"] > 0 and r["spread"][0] <= r["images_per_s"] <= r["spread"][1]
        assert 0 <= r["data_wait_fraction"] <= 1
    assert rows[0]["first_batch_s"] > 0
    prov = result["provenance"]
    assert len(prov["git_commit"]) == 40 and prov["versions"]["torch"] and prov["config"]["batch_size"] == 8
    md = path.with_suffix(".md").read_text()
    assert "| loader only | dali-cpu |" in md and "61,578-image epoch" in md
