"""benchmarks/epoch_time.py runs end to end (tiny windows; speed itself is recorded, not asserted), and
bad input ends in one line without a result file."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
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


def run_benchmark(*args, timeout=600):
    """The benchmark in a process of its own, and its peak resident memory (that process's children too)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); sys.exit(r.returncode)")
    res = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "benchmarks/epoch_time.py", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    *errors, peak = res.stderr.strip().splitlines()
    return res.returncode, res.stdout, errors, int(peak)


@pytest.mark.slow
def test_a_batch_size_of_zero_is_one_line_not_the_default(tmp_path):
    code, _, errors, _ = run_benchmark("--batch-size", "0", "--out", str(tmp_path))
    assert code == 2 and errors == ["epoch_time.py: error: argument --batch-size: must be >= 1, got 0 "
                                    "(--help lists the options)"]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_recipe_that_cannot_fit_is_refused_in_one_line_before_anything_is_allocated(synth_shards, tmp_path):
    code, _, errors, peak = run_benchmark("--shards", str(synth_shards), "--what", "synthetic", "--batch-size", "65536",
                                          "--image-size", "448", "--out", str(tmp_path))
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("epoch_time: error: this configuration needs about ") and "available" in errors[0]
    assert "resnet10t" in errors[0]  # the CPU default: make run's recipe, with the flags on top
    assert peak < 3 * 2**30 and not list(tmp_path.iterdir())  # the 150 GiB batch was never allocated


@pytest.mark.slow
def test_nothing_measured_is_an_error_and_writes_no_result(synth_shards, tmp_path):
    """Every loader skipped (no full batch of 512 in the set): one line, exit 2, no empty result file."""
    code, out, errors, _ = run_benchmark("--shards", str(synth_shards), "--what", "loaders", "--loaders", "pil",
                                         "--batch-size", "512", "--out", str(tmp_path))
    assert code == 2 and "pil: skipped" in out
    assert errors == ["epoch_time: error: nothing was measured (every measurement was skipped, reasons above); "
                      "no result written"]
    assert not list(tmp_path.iterdir())


def test_results_are_added_under_new_names_never_over_a_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    from benchmarks import epoch_time

    monkeypatch.setattr(epoch_time.time, "strftime", lambda fmt, *a: "20260101-000000")
    mine = tmp_path / f"epoch_time-20260101-000000-cpu{os.cpu_count()}.json"
    mine.write_text("someone else's file")
    args = epoch_time.parse_args(["--out", str(tmp_path)])
    args.recipe, args.batch_size, args.shards = "test", 8, "shards"
    row = {"what": "loader only", "loader": "pil", "images_per_s": 10.0, "spread": [9.0, 11.0], "data_wait_fraction": 0.5,
           "of_ceiling": None, "epoch_s_61578": 1.0, "speedup_vs_study": 1.0, "first_batch_s": None}
    prov = {"gpu": None, "date": "d", "cpu": "c", "cpu_cores": 2, "git_commit": "0" * 40, "git_dirty": False,
            "versions": {"torch": "x"}}
    config = {"image_size": 32, "crop_size": 128, "model": "m", "freeze_stages": 0, "precision": "fp32"}
    stem = epoch_time.write_results(args, config, [row], prov)
    assert mine.read_text() == "someone else's file"
    assert stem.name.endswith("-2") and json.loads(stem.with_suffix(".json").read_text())["results"] == [row]
    with pytest.raises(epoch_time.BenchmarkError, match="is a file"):
        epoch_time.write_results(epoch_time.parse_args(["--out", str(mine)]), config, [row], prov)


def test_the_default_recipe_is_make_runs_on_a_cpu_and_the_studys_on_a_gpu():
    sys.path.insert(0, str(REPO))
    from benchmarks import epoch_time

    cpu = epoch_time.resolve(epoch_time.parse_args([]), cuda=False)
    assert (cpu.model, cpu.image_size, cpu.batch_size) == ("resnet10t", 48, 32)  # gzfast/configs/cpu_small.yaml
    gpu = epoch_time.resolve(epoch_time.parse_args([]), cuda=True)
    assert (gpu.model, gpu.image_size, gpu.batch_size, gpu.freeze_stages) == ("convnext_small", 224, 512, 2)
    flags = epoch_time.resolve(epoch_time.parse_args(["--batch-size", "64"]), cuda=False)
    assert (flags.model, flags.batch_size) == ("resnet10t", 64)
