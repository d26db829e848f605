import numpy as np
import pytest

from gzfast.metrics import evaluation_report, per_tier_rmse, rmse


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
