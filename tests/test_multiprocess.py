"""Several processes through `accelerate launch` on the CPU (two gloo ranks through torchrun): each rank
reads its own slice, validation covers every sample once, metrics are reduced, only rank 0 writes, and a
kill -9 or a SIGTERM to one rank followed by --resume ends as an unbroken run does."""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gzfast import checkpoint as ckpt
from gzfast.train import TIMING_KEYS
from shard_tools.layout import PackedSet

from helpers import accelerate_launch, finish, kill_all, rank_pids, read_shard_samples

pytestmark = pytest.mark.slow
MICRO = 8  # --batch-size 16 over 2 processes
SLOW = {"TEST_BATCH_DELAY": "0.15"}  # time to signal a run mid-epoch (results do not depend on it)


def records(run: Path, kind=None):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def ids_of(run: Path, name: str) -> list[int]:
    return json.loads((run / name).read_text())


def split_ids(shards: Path, split: str, tiers=None) -> set[int]:
    return {int(k) for p in PackedSet.open(shards).paths(split, tiers) for k in read_shard_samples(Path(p))}


@pytest.fixture(scope="module")
def two_process_run(synth_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    proc = accelerate_launch(synth_shards, run)
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    return run, out


def one_process_val_rmse(shards: Path, run: Path) -> float:
    """The validation RMSE of the run's last weights, evaluated by one process over the whole val set."""
    from gzfast.build import create_model
    from gzfast.config import config_from_dict
    from gzfast.loaders import make_loader
    from gzfast.metrics import evaluation_report
    state = ckpt.load(run / "checkpoints" / "last.pt")
    model = create_model(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    packed = PackedSet.open(shards)
    loader = make_loader("dali-cpu", packed.paths("val"), train=False, batch_size=MICRO, image_size=32, crop_size=128,
                         workers=1)
    preds, targets = [], []
    with torch.no_grad():
        for b in loader:
            preds.append(model(b.images.contiguous(memory_format=torch.channels_last)).float().numpy())
            targets.append(b.labels.numpy())
    return evaluation_report(np.concatenate(preds), np.concatenate(targets), packed.thresholds["high"],
                             packed.thresholds["low"])["rmse"]


def test_two_processes_split_the_data_and_agree_with_one(synth_shards, two_process_run):
    run, out = two_process_run
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["per_process_batch"] == MICRO and config["batch_size"] == 16
    # only rank 0 prints and writes: one line per epoch, one record per epoch
    assert out.count("epoch   1/2 [high]") == 1 and out.count("epoch   2/2 [all]") == 1
    epochs = records(run, "epoch")
    assert [r["stage"] for r in epochs] == ["high", "all"]
    for epoch, tiers in ((0, ["high"]), (1, None)):
        stage = split_ids(synth_shards, "train", tiers)
        r0, r1 = ids_of(run, f"ids-rank0-epoch{epoch}.json"), ids_of(run, f"ids-rank1-epoch{epoch}.json")
        assert len(r0) == len(r1) == len(stage) // 2 // MICRO * MICRO  # the same step count on both ranks
        assert len(set(r0)) == len(r0) and len(set(r1)) == len(r1) and not set(r0) & set(r1)
        assert set(r0) | set(r1) <= stage  # the curriculum stage changed on both ranks at the same epoch
        assert len(stage) - len(r0) - len(r1) <= 2 * MICRO  # at most one dropped partial batch per rank
        assert epochs[epoch]["samples"] == len(r0) + len(r1)
    v0, v1 = ids_of(run, "val-ids-rank0.json"), ids_of(run, "val-ids-rank1.json")
    assert sorted(v0 + v1) == sorted(split_ids(synth_shards, "val"))  # every val sample exactly once
    assert one_process_val_rmse(synth_shards, run) == pytest.approx(epochs[-1]["val_rmse"], abs=1e-6)


def assert_same_run(a: Path, b: Path):
    sa, sb = ckpt.load(a / "checkpoints" / "last.pt"), ckpt.load(b / "checkpoints" / "last.pt")
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert untimed(records(a)) == untimed(records(b))


def wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    kill_all(proc)
    raise AssertionError("the run never got there")


def in_epoch_2(run: Path) -> bool:
    path, last = run / "metrics.jsonl", run / "checkpoints" / "last.pt"
    if not path.exists() or not last.exists():
        return False
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return any(r["kind"] == "step" and r["epoch"] == 2 and r["step"] >= 2 for r in rows)


def test_kill_9_of_the_whole_run_then_resume_matches_an_unbroken_run(synth_shards, two_process_run, tmp_path):
    run = tmp_path / "killed"
    proc = accelerate_launch(synth_shards, run, env=SLOW)
    wait_for(lambda: in_epoch_2(run), proc)
    kill_all(proc)
    proc.communicate(timeout=60)
    assert ckpt.load(run / "checkpoints" / "last.pt")["epoch"] == 1
    proc = accelerate_launch(synth_shards, run, "--resume")
    _, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert_same_run(two_process_run[0], run)


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(synth_shards, two_process_run, tmp_path):
    run = tmp_path / "stopped"
    proc = accelerate_launch(synth_shards, run, env=SLOW)
    wait_for(lambda: in_epoch_2(run), proc)
    os.kill(rank_pids(proc.pid)[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it at the next log point
    _, err = finish(proc, timeout=120)
    assert proc.returncode != 0 and "checkpoint saved" in err and "--resume" in err, err[-3000:]
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step"] > 0 and state["world_size"] == 2
    assert len(state["epoch_stats_per_rank"]) == 2
    steps = {r: len(ids_of(run, f"ids-rank{r}-epoch1.json")) // MICRO for r in (0, 1)}
    # both ranks took the same number of steps (the loader may have handed over one batch past the stop)
    assert abs(steps[0] - steps[1]) <= 1 and state["step"] <= min(steps.values())
    proc = accelerate_launch(synth_shards, run, "--resume")
    _, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert_same_run(two_process_run[0], run)
