import numpy as np
import pytest

from gzfast.evaluate import eval_report
from gzfast.metrics import evaluation_report, per_question_rmse, per_tier_rmse, pooled_rmse, rmse
from shard_tools import schema


def test_rmse_is_the_kaggle_metric():
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 37)), rng.random((50, 37))
    assert rmse(a, b) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)))
    assert rmse(a, a) == 0
    with pytest.raises(ValueError):
        rmse(a, b[:, :36])


def test_per_tier_rmse_recomputes_tiers_from_labels():
    target = np.zeros((3, 37))
    target[0, 0], target[1, 0], target[2, 0] = 0.99, 0.9, 0.5   # high, medium, low by max value
    pred = target.copy()
    pred[2] += 0.1
    tiers = per_tier_rmse(pred, target, 0.94, 0.85)
    assert tiers["high"] == 0 and tiers["medium"] == 0 and tiers["low"] == pytest.approx(0.1)
    report = evaluation_report(pred, target, 0.94, 0.85)
    assert set(report["per_question"]) == {f"Q{i}" for i in range(1, 12)}


def test_rmse_equals_a_hand_computation_on_a_small_table():
    # two galaxies x 37 answers; three answers off by 0.5, 0.3 and 0.4: squared errors sum to 0.5 over 74 values
    target = np.zeros((2, 37))
    pred = target.copy()
    pred[0, 0], pred[1, 5], pred[1, 36] = 0.5, 0.3, 0.4
    assert rmse(pred, target) == pytest.approx(np.sqrt(0.5 / 74), rel=1e-12)
    # the per-question figures pool back to it, weighted by their counts (Q1: columns 0-2, Q3: 5-6, Q11: 31-36)
    per_q = per_question_rmse(pred, target)
    assert per_q["Q1"] == pytest.approx(np.sqrt(0.25 / 6)) and per_q["Q11"] == pytest.approx(np.sqrt(0.16 / 12))
    sizes = {f"Q{q.number}": 2 * len(q.columns) for q in schema.QUESTIONS}
    assert pooled_rmse((per_q[k], sizes[k]) for k in per_q) == pytest.approx(rmse(pred, target), rel=1e-12)
    answers = eval_report(pred, target, np.zeros(37), 0.94, 0.85)["per_answer"]
    assert answers["Class1.1"]["model"] == pytest.approx(np.sqrt(0.25 / 2)) and answers["Class1.2"]["model"] == 0
