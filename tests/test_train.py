"""The trainer end to end on the CPU: tiny ConvNeXt, tiny images, the synthetic shards of conftest."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from gzfast import checkpoint as ckpt
from gzfast import train as train_mod
from gzfast.config import LAUNCH_FACTS
from gzfast.resume import resolve_config
from gzfast.train import TIMING_KEYS, main

from helpers import REPO, load_manifest, read_shard_samples

LEARNING_BOUND = 0.85  # the main job (4,000 galaxies, 48 px, 25 epochs) reaches about 0.55; see README

TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16",
        "--workers", "1", "--loader", "dali-cpu", "--log-every", "2", "--lr-backbone", "1e-3", "--lr-head", "1e-3"]


def tiny(shards, out, *extra):
    return ["--shards", str(shards), "--out", str(out), *TINY, *extra]


def records(run: Path, kind=None):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def tier_ids(shards: Path) -> dict[int, str]:
    out = {}
    for s in load_manifest(shards)["shards"]:
        if s["split"] == "train":
            out.update({int(k): s["tier"] for k in read_shard_samples(shards / s["path"])})
    return out


@pytest.mark.slow
def test_plain_run_writes_config_metrics_checkpoints_and_plot(synth_shards, tmp_path, capsys):
    run = tmp_path / "plain"
    assert main(tiny(synth_shards, run, "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "predict-the-training-mean RMSE" in out
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["curriculum"] is None and config["precision"] == "fp32"
    epochs = records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["stage"] == "all" for r in epochs)
    for r in epochs:
        assert set(r) >= {"train_loss", "val_rmse", "val_per_question", "val_per_tier", "epoch_time", "data_wait",
                          "compute_time", "images_per_s", "samples", "time"}
        assert len(r["val_per_question"]) == 11 and set(r["val_per_tier"]) <= {"high", "medium", "low"}
        assert 0 < r["val_rmse"] < 0.5 and r["images_per_s"] > 0 and 0 <= r["data_wait"] <= r["epoch_time"]
    steps = records(run, "step")
    assert steps and all(np.isfinite(s["loss"]) for s in steps) and steps[0]["step"] == 2
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert config["world_size"] == 1 and config["per_process_batch"] == 16
    assert state["epoch"] == 2 and state["world_size"] == 1
    assert state["config"] == {k: v for k, v in config.items() if k not in LAUNCH_FACTS}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_val_rmse"] == epochs[-1]["val_rmse"] and summary["baseline_rmse"] > 0
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_curriculum_first_stage_reads_only_high_tier(synth_shards, tmp_path, monkeypatch):
    seen: dict[int, list[int]] = {}
    real = train_mod.make_loader

    def recording(name, paths, **kw):
        loader = real(name, paths, **kw)
        if not kw["train"]:
            return loader

        class Recorder:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for b in loader:
                    seen.setdefault(kw["epoch"], []).extend(b.ids.tolist())
                    yield b
        return Recorder()

    monkeypatch.setattr(train_mod, "make_loader", recording)
    run = tmp_path / "cur"
    assert main(tiny(synth_shards, run, "--curriculum", "high:1,high+medium:1,all:1", "--no-plot")) == 0
    tiers = tier_ids(synth_shards)
    assert seen[0] and {tiers[g] for g in seen[0]} == {"high"}
    assert {tiers[g] for g in seen[1]} == {"high", "medium"}
    assert {tiers[g] for g in seen[2]} == {"high", "medium", "low"}
    assert [r["stage"] for r in records(run, "epoch")] == ["high", "high+medium", "all"]
    # the stage-1 epoch is a third of the data: fewer samples than the all-tier epoch
    samples = [r["samples"] for r in records(run, "epoch")]
    assert samples[0] < samples[1] < samples[2]


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_named(synth_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "mse", lambda pred, target: (pred.float() * float("nan")).mean())
    assert main(tiny(synth_shards, tmp_path / "nan", "--epochs", "1", "--no-plot")) == 3
    err = capsys.readouterr().err
    assert "loss became nan in steps 1-2 of epoch 1" in err and "lower --lr" in err


@pytest.mark.slow
def test_frozen_stages_keep_the_pretrained_weights(synth_shards, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("convnext_atto", num_classes=1000)
    weights = tmp_path / "atto.pth"
    torch.save(source.state_dict(), weights)
    run = tmp_path / "ft"
    assert main(tiny(synth_shards, run, "--epochs", "1", "--pretrained", str(weights), "--no-plot")) == 0
    assert json.loads((run / "config.json").read_text())["freeze_stages"] == 2
    trained = ckpt.load(run / "checkpoints" / "last.pt")["model"]
    for k, v in source.state_dict().items():
        if k.startswith(("stem.", "stages.0.", "stages.1.")):
            assert torch.equal(trained["backbone." + k], v), k
    assert not torch.equal(trained["backbone.stages.3.blocks.0.conv_dw.weight"], source.state_dict()["stages.3.blocks.0.conv_dw.weight"])


# --- exact resume ------------------------------------------------------------------------------------

def launch(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "gzfast/train.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_line(run: Path, predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and any(predicate(json.loads(l)) for l in path.read_text().splitlines() if l.endswith("}")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the run never got there")


RESUME_ARGS = ["--epochs", "2", "--log-every", "1", "--no-plot", "--deterministic"]


@pytest.fixture(scope="module")
def straight_run(synth_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = launch(tiny(synth_shards, run, *RESUME_ARGS))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return run


def resume_and_compare(shards: Path, run: Path, straight: Path):
    proc = launch(tiny(shards, run, *RESUME_ARGS, "--resume"))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert_same_run(straight, run)


def assert_same_run(a: Path, b: Path):
    sa, sb = ckpt.load(a / "checkpoints" / "last.pt"), ckpt.load(b / "checkpoints" / "last.pt")
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert untimed(records(a)) == untimed(records(b))


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_is_exact(synth_shards, straight_run, tmp_path):
    run = tmp_path / "stopped"
    proc = launch(tiny(synth_shards, run, *RESUME_ARGS))
    wait_for_line(run, lambda r: r["kind"] == "step" and r["epoch"] == 2 and r["step"] >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err and "--resume" in err
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step"] > 0  # mid-epoch 2
    resume_and_compare(synth_shards, run, straight_run)


@pytest.mark.slow
def test_kill_9_after_an_epoch_and_resume_is_exact(synth_shards, straight_run, tmp_path):
    run = tmp_path / "killed"
    proc = launch(tiny(synth_shards, run, *RESUME_ARGS))
    wait_for_line(run, lambda r: r["kind"] == "epoch" and r["epoch"] == 1, proc)
    last = run / "checkpoints" / "last.pt"
    while not last.exists() or ckpt.load(last)["epoch"] != 1:  # the epoch line comes just before the save
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resume_and_compare(synth_shards, run, straight_run)


@pytest.mark.slow
def test_resume_refuses_a_changed_config_or_manifest(synth_shards, straight_run, tmp_path):
    res = subprocess.run([sys.executable, "gzfast/train.py", *tiny(synth_shards, straight_run, *RESUME_ARGS,
                          "--resume", "--lr-head", "0.5")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "resume refused" in res.stderr and "lr_head: 0.001 -> 0.5" in res.stderr
    res = subprocess.run([sys.executable, "gzfast/train.py", *tiny(synth_shards, straight_run, *RESUME_ARGS,
                          "--resume", "--lr-head", "0.5", "--force")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "nothing to do" in res.stdout
    # the same run pointed at shards whose manifest differs
    import shutil
    other = tmp_path / "shards"
    shutil.copytree(synth_shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = subprocess.run([sys.executable, "gzfast/train.py", *tiny(other, straight_run, *RESUME_ARGS, "--resume",
                          "--force")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0
    res = subprocess.run([sys.executable, "gzfast/train.py", *tiny(other, straight_run, *RESUME_ARGS, "--resume")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "shards" in res.stderr and "differ" in res.stderr
    res = subprocess.run([sys.executable, "gzfast/train.py", "--resume", "--out", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "nothing to resume" in res.stderr


KILLED_WRITER = """
import sys, torch
sys.path.insert(0, {repo!r})
from gzfast.checkpoint import atomic_save
big = torch.randn(8_000_000)
i = 0
while True:
    i += 1
    atomic_save({{"i": i, "w": big}}, {path!r})
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.05, 0.23, 0.41):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(repo=str(REPO), path=str(path))])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state = ckpt.load(path)
        assert state["i"] >= 1 and state["w"].shape == (8_000_000,)


@pytest.mark.slow
def test_a_small_run_learns_well_beyond_the_mean(mid_shards, tmp_path):
    """The main job's recipe, smaller (1,500 galaxies, 32 px, 8 epochs): it must beat predicting the mean."""
    run = tmp_path / "run"
    args = ["--config", str(REPO / "gzfast/configs/cpu_small.yaml"), "--shards", str(mid_shards), "--out", str(run),
            "--curriculum", "--epochs", "8", "--image-size", "32", "--no-plot", "--workers", "2"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ratio"] <= LEARNING_BOUND, summary


@pytest.mark.slow
def test_compiled_model_never_recompiles_after_the_first_train_and_eval_steps(synth_shards, tmp_path, monkeypatch):
    """torch.compile with a counting backend (cheap, CPU): every graph is compiled in epoch 1 (train and
    eval, including validation's padded last batch); epochs 2 and 3 add none."""
    graphs: list[list[tuple]] = []

    def counting_backend(gm, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counting_backend))
    after_epoch = []
    real_end = train_mod.Trainer.end_epoch

    def end_epoch(self, *args):
        real_end(self, *args)
        after_epoch.append(len(graphs))

    monkeypatch.setattr(train_mod.Trainer, "end_epoch", end_epoch)
    val_samples = load_manifest(synth_shards)["counts"]["val"]
    assert val_samples % 16, "the val set must end in a partial batch for this test to mean something"
    assert main(tiny(synth_shards, tmp_path / "run", "--epochs", "3", "--compile", "on", "--no-plot")) == 0
    assert after_epoch[0] >= 2, graphs  # a train graph and an eval graph
    assert after_epoch == [after_epoch[0]] * 3, graphs
    batches = {s[0] for shapes in graphs for s in shapes if len(s) == 4 and s[1:] == (3, 32, 32)}
    assert batches == {16}  # one batch shape, train and eval


@pytest.mark.slow
def test_resumed_learning_rates_come_from_the_config_and_logs_name_the_right_group(synth_shards, tmp_path):
    """A cosine schedule leaves the optimizer's groups at a scaled LR: a resumed run must start from the
    configured base LRs, not scale the scaled ones again; the logged lr_backbone is the backbone's."""
    run = tmp_path / "cos"
    args = tiny(synth_shards, run, "--epochs", "1", "--no-plot", "--lr-schedule", "cosine", "--lr-backbone", "1e-3",
                "--lr-head", "2e-3", "--ceiling-probe", "0")
    assert main(args) == 0
    steps = records(run, "step")
    # early in the cosine the head's LR is still near 2e-3: a logged value near it would be the head's
    assert 0.9e-3 < steps[0]["lr_backbone"] <= 1e-3 and all(s["lr_backbone"] <= 1e-3 for s in steps)
    cfg, state, _ = resolve_config([*args, "--resume"], cuda=False)
    assert max(g["lr"] for g in state["optimizer"]["param_groups"]) < 1e-4  # the end of the cosine
    trainer = train_mod.Trainer(cfg, state)
    named = {g["name"]: base for g, base in zip(trainer.t.optimizer.param_groups, trainer.base_lrs)}
    assert named["head"] == 2e-3 and named["backbone"] == 1e-3
