"""Kaggle RMSE, per question, per answer and per tier: the one RMSE that training, evaluation and the
tests use (sqrt of the mean over galaxies x 37 answers of the squared error)."""
from __future__ import annotations

import numpy as np
import torch

from shard_tools import schema


def rmse(pred, target) -> float:
    """The Kaggle metric: root mean squared error over all 37 outputs of all galaxies."""
    p = torch.as_tensor(np.array(pred, dtype=np.float64) if isinstance(pred, np.ndarray) else pred, dtype=torch.float64)
    t = torch.as_tensor(np.array(target, dtype=np.float64) if isinstance(target, np.ndarray) else target,
                        dtype=torch.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    return float(torch.sqrt(torch.mean((p - t) ** 2)))


def per_question_rmse(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {f"Q{q.number}": rmse(pred[:, list(q.columns)], target[:, list(q.columns)]) for q in schema.QUESTIONS}


def per_answer_rmse(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {name: rmse(pred[:, i], target[:, i]) for i, name in enumerate(schema.COLUMNS)}


def pooled_rmse(parts) -> float:
    """The RMSE of a whole from the RMSEs of disjoint parts and their sizes (number of squared errors):
    sqrt(sum n_i rmse_i^2 / sum n_i). Per-tier (n_i = rows x 37) and per-question (n_i = rows x answers)
    figures recombine to the overall one this way."""
    parts = [(float(r), float(n)) for r, n in parts if n]
    total = sum(n for _, n in parts)
    return float(np.sqrt(sum(n * r * r for r, n in parts) / total)) if total else float("nan")


def per_tier_rmse(pred: np.ndarray, target: np.ndarray, high: float, low: float) -> dict[str, float]:
    """RMSE per confidence tier, the tier recomputed from the labels (val shards are not split by tier)."""
    tiers = schema.tier_of(schema.confidence(target), high, low)
    return {t: rmse(pred[tiers == t], target[tiers == t]) for t in schema.TIERS if (tiers == t).any()}


def evaluation_report(pred: np.ndarray, target: np.ndarray, high: float, low: float) -> dict:
    return {"rmse": rmse(pred, target), "per_question": per_question_rmse(pred, target),
            "per_tier": per_tier_rmse(pred, target, high, low)}
