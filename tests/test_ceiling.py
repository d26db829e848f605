"""gzfast.ceiling on a clock of its own (no timed test): the probe warms up by time and keeps the fastest
window, interleaved windows alternate and never span two loader epochs, and the texts the trainer prints."""
import pytest
import torch

from gzfast import ceiling
from gzfast.loaders import Batch


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(ceiling, "clock", fake)
    return fake


def a_batch(n: int = 4) -> Batch:
    return Batch(torch.zeros(n, 3, 2, 2), None, torch.zeros(n, dtype=torch.int64))


def slow_start_step(clock, steady_s=0.01):
    """A step slow at first (compilation, allocator growth, kernel selection): 0.5 s above its steady
    10 ms on the first call, the excess shrinking by 30 % a call."""
    calls = []

    def step(_batch):
        clock.now += steady_s + 0.5 * 0.7 ** len(calls)
        calls.append(1)

    return step, calls


def test_the_probe_warms_up_until_the_step_settles_and_measures_the_steady_state(clock):
    step, calls = slow_start_step(clock)
    rate = ceiling.probe_steps_per_s(step, a_batch(), "cpu", steps=5, warmup=2)
    assert rate == pytest.approx(100.0, rel=0.01)
    # the trainer's old probe on the same step: 2 warm-up steps, then 5 timed ones, still slowing it down
    step, _ = slow_start_step(clock)
    ceiling.time_steps(step, a_batch(), 2, "cpu")
    assert 5 / ceiling.time_steps(step, a_batch(), 5, "cpu") < 0.15 * rate


def test_with_several_processes_every_one_takes_the_same_steps(clock):
    """Each step's gradient all-reduce pairs the processes up, so the probe's stopping and its window size
    are agreed (the largest over the processes): another rank, not ready before its 450th chunk and with
    steps of 20 ms, sets both for this one."""
    step, calls = slow_start_step(clock)
    readiness = []

    def agree(x):  # the max over this rank and the other one
        if x in (0.0, 1.0):  # a readiness vote: 1 while a rank still warms up
            readiness.append(x)
            return 1.0 if len(readiness) < 450 else x
        return max(x, 0.02)  # the seconds per step the windows are sized by

    rate = ceiling.probe_steps_per_s(step, a_batch(), "cpu", steps=5, warmup=2, agree=agree)
    assert len(readiness) == 450 and readiness.index(0.0) < 200  # alone, this rank was ready much sooner
    assert len(calls) == 1 + 450 + 3 * 25  # the compiling step, a chunk per vote, windows of 0.5 s at 20 ms
    assert rate == pytest.approx(100.0, rel=0.01)


def test_the_probe_keeps_its_fastest_window(clock):
    """Noise on a shared machine only slows a window down: one disturbed window does not lower it."""
    calls = []

    def step(_batch):
        calls.append(1)
        disturbed = 160 <= len(calls) < 220  # somebody else's job during one of the windows
        clock.now += 0.05 if disturbed else 0.01

    assert ceiling.probe_steps_per_s(step, a_batch(), "cpu", steps=5, warmup=2) == pytest.approx(100.0)
    assert len(calls) > 220


def test_interleaved_windows_alternate_and_stay_inside_one_loader_epoch(clock):
    synthetic = a_batch()
    origin = {id(synthetic): "synthetic"}
    seen = []  # where every batch stepped came from

    def open_epoch(k):
        loader = [a_batch() for _ in range(7)]  # 7 batches an epoch
        origin.update({id(b): f"epoch{k}" for b in loader})
        return loader

    def step(b):
        seen.append(origin[id(b)])
        clock.now += 0.02 if seen[-1] == "synthetic" else 0.025

    result = ceiling.interleave(step, synthetic, open_epoch, "cpu", rounds=3, window_steps=3, lead_in=1)
    assert len(result.synthetic) == len(result.fed) == 3
    assert result.ceiling == pytest.approx(4 / 0.02) and result.fed_rate == pytest.approx(4 / 0.025)
    assert result.of_ceiling == pytest.approx(0.8) and result.record()["pair_ratios"] == pytest.approx([0.8] * 3)
    # each round: a synthetic window, then 1 lead-in + a fed window; 3 left in an epoch of 7 cannot hold
    # another lead-in + window, so every fed window starts a fresh epoch
    assert seen == ["synthetic"] * 3 + ["epoch0"] * 4 + ["synthetic"] * 3 + ["epoch1"] * 4 + \
        ["synthetic"] * 3 + ["epoch2"] * 4
    assert result.epochs_opened == 3
    with pytest.raises(ValueError, match="cannot hold a window"):
        ceiling.interleave(step, synthetic, open_epoch, "cpu", rounds=1, window_steps=7, lead_in=1)


def test_a_fed_rate_above_the_ceiling_is_a_probe_error_not_a_fraction():
    below = ceiling.ceiling_report(80.0, 100.0)
    assert below == {"of_ceiling": 0.8, "ceiling_probe_error": False, "text": "80% of the ceiling"}
    above = ceiling.ceiling_report(120.0, 100.0)
    assert above["of_ceiling"] is None and above["ceiling_probe_error"]
    assert "probe error" in above["text"] and "%" not in above["text"]
    assert ceiling.ceiling_report(50.0, None)["of_ceiling"] is None


def test_the_expected_epoch_time_names_make_run_for_a_gpu_recipe_on_a_cpu():
    slow = ceiling.expected_epoch_line(7.0, 55_420, cuda=False)  # ConvNeXt-small at 224 px on 2 cores
    assert slow.startswith("expected epoch time: at least 2.2 h (55,420 images at the ceiling of 7 img/s")
    assert "GPU recipe" in slow and "make run" in slow
    assert "make run" not in ceiling.expected_epoch_line(375.0, 3_600, cuda=False)  # make run's own: 10 s
    assert "make run" not in ceiling.expected_epoch_line(7.0, 55_420, cuda=True)
    assert "14 s" in ceiling.expected_epoch_line(3_900.0, 55_420, cuda=True)
    assert "not known" in ceiling.expected_epoch_line(None, 100, cuda=False)
