"""benchmarks/curriculum.py, the curriculum experiment: its arithmetic on made-up runs, its refusals, the
--quick experiment end to end, a killed experiment continued, and the trainer's --log-with trackers."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gzfast import checkpoint as ckpt
from gzfast import train as train_mod
from gzfast.metrics_log import TRACKER_PROJECT

from helpers import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the repo, not an installed package
from benchmarks import experiment_summary as summ  # noqa: E402

spec = importlib.util.spec_from_file_location("curriculum_experiment", REPO / "benchmarks" / "curriculum.py")
exp = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = exp  # its dataclass looks itself up there
spec.loader.exec_module(exp)

# The trainer settings of the tests: --quick's, exact across processes and resumes.
QUICK = ["--quick", "--", "--deterministic"]


def experiment(shards, out, *args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "benchmarks/curriculum.py", "--shards", str(shards), "--out", str(out), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


# --- arithmetic on made-up runs (no training) -----------------------------------------------------------

def fake_run(out: Path, schedule: str, seed: int, rmses: list[float], seconds: float = 10.0, samples: int = 100) -> exp.Run:
    stages = [st.name for st in exp.parse_schedule(schedule) for _ in range(st.epochs)]
    folder = out / "runs" / f"{exp.schedule_slug(schedule)}-seed{seed}"
    folder.mkdir(parents=True)
    rows = [{"kind": "epoch", "epoch": i + 1, "stage": stages[i], "train_loss": 0.05 / (i + 1), "val_rmse": v,
             "epoch_time": seconds, "samples": samples} for i, v in enumerate(rmses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text("{}")
    return exp.Run(schedule, seed, len(rmses), folder)


def test_summary_target_reach_verdict_and_figure(tmp_path):
    runs = [fake_run(tmp_path, "all:3", 0, [0.20, 0.15, 0.10]), fake_run(tmp_path, "all:3", 1, [0.20, 0.16, 0.12]),
            fake_run(tmp_path, "high:1,all:2", 0, [0.18, 0.11, 0.10], seconds=5),
            fake_run(tmp_path, "high:1,all:2", 1, [0.18, 0.111, 0.105], seconds=5),
            fake_run(tmp_path, "high:2,all:1", 0, [0.30, 0.30, 0.30]), fake_run(tmp_path, "high:2,all:1", 1, [0.3, 0.3, 0.11])]
    summary = exp.summarize_runs(["all:3", "high:1,all:2", "high:2,all:1"], runs, tmp_path, None)
    assert summary["reference"] == "all:3" and summary["target_rmse"] == pytest.approx(0.11 * 1.02)
    plain, cur, never = summary["schedules"]
    assert plain["final_val_rmse"]["mean"] == pytest.approx(0.11) and plain["final_val_rmse"]["sd"] == pytest.approx(0.01414, abs=1e-4)
    assert plain["best_val_rmse"]["values"] == [0.10, 0.12] and plain["wall_s"]["mean"] == 30 and plain["images"]["mean"] == 300
    # plain: seed 0 reaches 0.1122 at epoch 3 (30 s); seed 1 never does (0.12)
    assert plain["time_to_target_s"]["values"] == [30, None] and plain["time_to_target_s"]["n"] == 1
    assert cur["time_to_target_s"]["values"] == [10, 10] and cur["images_to_target"]["values"] == [200, 200]
    assert cur["epoch_at_target"]["values"] == [2, 2] and never["time_to_target_s"]["n"] == 1
    assert summary["fastest"] == "high:1,all:2"
    assert "did not reach it in every seed" in summary["verdict"] and "all:3" in summary["verdict"]
    runs_by_name = {(r["schedule"], r["seed"]): r for r in summary["runs"]}
    assert runs_by_name[("all:3", 1)]["time_to_target_s"] is None and runs_by_name[("all:3", 0)]["folder"] == "runs/all3-seed0"
    summary["provenance"] = {"cpu": "test cpu", "cpu_cores": 2, "gpu": None, "git_commit": "0" * 40, "date": "today"}
    text = summ.report(summary)
    assert "| `all:3` (plain) | 2 | 0.11000 ± 0.01414 |" in text and "not reached (0/2)" not in text.split("\n")[2]
    assert "30.0 s (1/2 reached)" in text and "10.0 ± 0.0 s" in text
    png = exp.figure2(summary, tmp_path / "figure2.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert summ.untimed(summary)["schedules"][0].keys() >= {"final_val_rmse", "images_to_target"}
    assert "wall_s" not in summ.untimed(summary)["schedules"][0] and "verdict" not in summ.untimed(summary)


def test_verdict_compares_the_difference_with_the_seed_spread(tmp_path):
    def verdict(plain_s, cur_s):
        rows = [{"schedule": s, "time_to_target_s": summ.spread(v)} for s, v in (("all:2", plain_s), ("high:1,all:1", cur_s))]
        found = summ.verdict(rows, "all:2", 0.1)
        return found, summ.verdict_sentence(found)
    clear, words = verdict([100, 102], [80, 81])
    assert clear.fastest == "high:1,all:1" and clear.exceeds_seed_spread is True
    assert clear.saving_vs_reference == pytest.approx(1 - 80.5 / 101) and "larger than the seed spread" in words
    noisy, words = verdict([100, 130], [90, 120])
    assert noisy.fastest == "high:1,all:1" and noisy.exceeds_seed_spread is False and "within the seed spread" in words
    slower, words = verdict([50, 52], [80, 81])
    assert slower.fastest == "all:2" and "takes 58% more time than all:2" in words


# --- refusals (one line, exit 2, nothing trained) -------------------------------------------------------

@pytest.mark.parametrize("case", ["schedule", "shards", "foreign", "own_flag", "trainer_flag", "seeds", "config",
                                  "other_settings", "other_shards"])
def test_bad_input_is_one_line_and_exit_2(case, synth_shards, tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["--shards", str(synth_shards), "--out", str(out), "--quick"]
    expect = {"schedule": "unknown tier 'hihg'", "shards": "no manifest", "foreign": "not an experiment's (notes.txt)",
              "own_flag": "--out, --seed after `--`", "trainer_flag": "choose from tensorboard", "seeds": "--seeds 0",
              "config": "unknown key 'epoch'", "other_settings": "other settings (model: 'convnext_atto' -> 'resnet10t'",
              "other_shards": "an experiment on other shards"}[case]
    if case == "schedule":
        args += ["--schedules", "all:3;hihg:1,all:2"]
    elif case == "shards":
        args[1] = str(tmp_path / "nowhere")
    elif case == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "own_flag":
        args += ["--", "--seed", "3", "--out", "x"]
    elif case == "trainer_flag":
        args += ["--", "--log-with", "nothing"]
    elif case == "seeds":
        args += ["--seeds", "0"]
    elif case == "config":
        (tmp_path / "bad.yaml").write_text("epoch: 5\n")
        args += ["--config", str(tmp_path / "bad.yaml")]
    elif case in ("other_settings", "other_shards"):  # --out holds another experiment: continuing it is refused
        out.mkdir()
        plan = {"settings": {"model": "convnext_atto"}, "data_fingerprint": exp.PackedSet.open(synth_shards).fingerprint}
        if case == "other_shards":
            plan["data_fingerprint"] = "another set"
        (out / "experiment.json").write_text(json.dumps(plan))
    assert exp.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("curriculum: error: ") and expect in err and err.count("\n") == 1, err
    if case == "foreign":
        assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists() or not (out / "runs").exists()


def tree(root: Path) -> dict:
    """Every path under `root` (and `root` itself): a link's target, a file's bytes, or None for a folder."""
    paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    return {p: os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None) for p in paths if p.exists()}


OUTPUT_CASES = {  # what is at a name the experiment writes -> the refusal
    "out_is_file": "is a file, not a folder", "result_is_folder": "summary.md is not a file the experiment wrote",
    "result_is_link": "figure2.png is not a file the experiment wrote", "lock_is_link": ".lock is not a file",
    "results_without_plan": "holds summary.json but no experiment.json", "plan_not_a_mapping": "not an experiment's plan",
    "foreign_log": "all3-seed0.log is not a log the experiment wrote", "log_is_link": "all3-seed0.log is not a file",
    "run_is_file": "all3-seed0 is not a folder", "foreign_data": "not --quick's data (notes.txt)"}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_no_output_replaces_a_file_the_experiment_did_not_write(case, synth_shards, tmp_path, capsys):
    out, mine = tmp_path / "exp", tmp_path / "mine.txt"
    mine.write_text("mine")
    if case == "out_is_file":
        out = mine
    else:
        out.mkdir()
    if case not in ("out_is_file", "results_without_plan"):
        (out / "experiment.json").write_text("[1]" if case == "plan_not_a_mapping" else "{}")
    where = {"result_is_folder": "summary.md", "result_is_link": "figure2.png", "lock_is_link": ".lock",
             "results_without_plan": "summary.json", "foreign_log": "logs/all3-seed0.log", "log_is_link": "logs/all3-seed0.log",
             "run_is_file": "runs/all3-seed0", "foreign_data": "data/notes.txt"}.get(case)
    if where:
        path = out / where
        path.parent.mkdir(parents=True, exist_ok=True)
        if case.endswith("_is_link"):
            path.symlink_to(mine)
        elif case == "result_is_folder":
            path.mkdir()
            (path / "notes.md").write_text("mine")
        else:
            path.write_text("my notes")
    before = tree(out)
    assert exp.main(["--shards", str(synth_shards), "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curriculum: error: ") and OUTPUT_CASES[case] in err and err.count("\n") == 1, err
    assert tree(out) == before and mine.read_text() == "mine"  # nothing written, nothing replaced


def test_results_are_not_written_over_what_appeared_during_the_experiment(tmp_path):
    runs = [fake_run(tmp_path, "all:2", 0, [0.2, 0.1])]
    summary = exp.summarize_runs(["all:2"], runs, tmp_path, None)
    (tmp_path / "summary.md").mkdir()  # made while the runs trained, after the folder was checked
    with pytest.raises(exp.ExperimentError, match="summary.md is not a file"):
        exp.write_results(tmp_path, summary)
    assert not (tmp_path / "summary.json").exists() and not any((tmp_path / "summary.md").iterdir())


def test_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    summary = exp.summarize_runs(["all:2"], [fake_run(tmp_path, "all:2", 0, [0.2, 0.1])], tmp_path, None)
    png = tmp_path / "figure2.png"
    png.write_bytes(b"the previous figure")

    def cut(fig, fname, **kw):  # a crash halfway through the write
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", cut)
    with pytest.raises(OSError):
        exp.figure2(summary, png)
    assert png.read_bytes() == b"the previous figure" and sorted(p.name for p in tmp_path.iterdir()) == ["figure2.png", "runs"]


def test_a_run_folder_with_foreign_files_is_left_alone(tmp_path):
    run = exp.Run("all:2", 0, 2, tmp_path / "runs" / "all2-seed0")
    (run.folder / "checkpoints").mkdir(parents=True)
    (run.folder / "metrics.jsonl").write_text("")
    (run.folder / "checkpoints" / ".last.pt.tmp123").write_text("half")
    assert exp.run_state(run) == "new" and not any(run.folder.iterdir())  # only the trainer's files: cleared
    (run.folder / "metrics.jsonl").write_text("")
    (run.folder / "mine.txt").write_text("keep")
    with pytest.raises(exp.ExperimentError, match="mine.txt"):
        exp.run_state(run)
    assert (run.folder / "mine.txt").read_text() == "keep" and (run.folder / "metrics.jsonl").exists()


# --- the quick experiment, end to end -----------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_experiment(synth_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "exp"
    log = finish(experiment(synth_shards, out, *QUICK))
    return out, log


@pytest.mark.slow
def test_quick_experiment_summary_figure_and_no_rework(quick_experiment, synth_shards):
    out, log = quick_experiment
    assert "[1/4 all:3 seed 0] starting" in log and "[4/4 high:1,all:2 seed 1]" in log and "epoch   3/3" in log
    summary = json.loads((out / "summary.json").read_text())
    assert [r["schedule"] for r in summary["schedules"]] == ["all:3", "high:1,all:2"] and summary["reference"] == "all:3"
    for row in summary["schedules"]:
        assert row["seeds"] == [0, 1]
        for key in ("final_val_rmse", "best_val_rmse", "wall_s", "images", "time_to_target_s", "images_to_target"):
            assert set(row[key]) >= {"mean", "sd", "values"} and len(row[key]["values"]) == 2, key
        assert 0 < row["best_val_rmse"]["mean"] <= row["final_val_rmse"]["mean"] < 0.5 and row["wall_s"]["mean"] > 0
    plain, cur = summary["schedules"]
    assert cur["images"]["mean"] < plain["images"]["mean"]  # the high-tier epoch is a third of the data
    assert summary["target_rmse"] == pytest.approx(plain["final_val_rmse"]["mean"] * 1.02)
    assert summary["verdict"] and summary["provenance"]["git_commit"] and len(summary["runs"]) == 4
    for r in summary["runs"]:
        metrics = [json.loads(l) for l in (out / r["folder"] / "metrics.jsonl").read_text().splitlines()]
        assert r["final_val_rmse"] == [m for m in metrics if m["kind"] == "epoch"][-1]["val_rmse"]
    md = (out / "summary.md").read_text()
    assert "| `all:3` (plain) | 2 |" in md and summary["verdict"] in md and "time to target" in md
    assert (out / "figure2.png").read_bytes()[:4] == b"\x89PNG" and (out / "logs" / "all3-seed0.log").exists()
    # a second invocation trains nothing and writes the same summary
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    t0 = time.time()
    again = finish(experiment(synth_shards, out, *QUICK))
    assert again.count("finished before") == 4 and "starting" not in again and "continuing" not in again
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    assert summ.untimed(json.loads((out / "summary.json").read_text())) == summ.untimed(summary)
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_killed_experiment_continues_to_the_same_summary(quick_experiment, synth_shards, tmp_path):
    out = tmp_path / "exp"
    proc = experiment(synth_shards, out, *QUICK, start_new_session=True)
    last = out / "runs" / "all3-seed0" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not (last.exists() and ckpt.load(last)["epoch"] >= 1):  # the first run has finished an epoch
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the experiment and the trainer it runs, no chance to save
    proc.communicate(timeout=60)
    assert not (out / "summary.json").exists()
    log = finish(experiment(synth_shards, out, *QUICK))
    assert "[1/4 all:3 seed 0] continuing after epoch" in log and "[2/4 high:1,all:2 seed 0] starting" in log
    reference = json.loads((quick_experiment[0] / "summary.json").read_text())
    assert summ.untimed(json.loads((out / "summary.json").read_text())) == summ.untimed(reference)


@pytest.mark.slow
def test_make_compare_runs_in_reduced_form(tmp_path):
    """`make compare` as the README gives it, on a smaller synthetic set, one seed and two short schedules."""
    res = subprocess.run(
        ["make", "compare", f"PY={sys.executable}", "INSTALL=", f"SYNTH={tmp_path / 'synth'}", f"OUT={tmp_path / 'shards'}",
         "N_TRAIN=240", "N_TEST=20", "COMPARE_SEEDS=1", "COMPARE_SCHEDULES=all:2;high:1,all:1", f"COMPARE_OUT={tmp_path / 'exp'}",
         "COMPARE_ARGS=-- --image-size 32 --no-plot --ceiling-probe 0"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "| `all:2` (plain) | 1 |" in res.stdout and "accelerate.commands.launch" in (tmp_path / "exp/logs/all2-seed0.log").read_text()
    settings = json.loads((tmp_path / "exp" / "experiment.json").read_text())["settings"]
    assert settings["model"] == "resnet10t" and settings["image_size"] == 32  # make run's recipe, the flags on top


# --- the trainer's trackers ---------------------------------------------------------------------------

def test_log_with_a_missing_tracker_package_is_one_line(synth_shards, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert train_mod.main(["--shards", str(synth_shards), "--out", str(tmp_path / "run"), "--log-with", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err == "train: error: --log-with tensorboard needs the tensorboard package (pip install tensorboard)\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_log_with_tensorboard_logs_the_metrics_fields(synth_shards, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    assert train_mod.main(["--shards", str(synth_shards), "--out", str(run), "--model", "resnet10t", "--image-size", "32",
                           "--crop-size", "128", "--batch-size", "32", "--epochs", "1", "--log-every", "3", "--no-plot",
                           "--ceiling-probe", "0", "--log-with", "tensorboard"]) == 0
    assert "log_with" not in json.loads((run / "config.json").read_text())  # run control: not saved
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    folders = {p.parent for p in (run / TRACKER_PROJECT).rglob("events.out.tfevents.*")}
    [acc] = [a for a in (EventAccumulator(str(f)).Reload() for f in folders) if "step/loss" in a.Tags()["scalars"]]
    tags = set(acc.Tags()["scalars"])
    steps = [m for m in metrics if m["kind"] == "step"]
    epoch = [m for m in metrics if m["kind"] == "epoch"][0]
    assert {"step/loss", "step/lr_backbone", "step/time", "epoch/val_rmse", "epoch/train_loss", "epoch/epoch_time",
            "epoch/samples", "epoch/time", "epoch/val_per_tier/high"} <= tags
    logged = acc.Scalars("step/loss")
    assert [e.step for e in logged] == [m["global_step"] for m in steps]
    assert [e.value for e in logged] == pytest.approx([m["loss"] for m in steps], rel=1e-6)
    assert acc.Scalars("epoch/val_rmse")[0].value == pytest.approx(epoch["val_rmse"], rel=1e-6)
