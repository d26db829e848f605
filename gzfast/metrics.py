"""The RMSE that training, evaluation and the tests use (Kaggle's: the square root of the mean over
galaxies x answers of the squared error of the cumulative vote fractions), per question and per
confidence tier of any decision tree."""
from __future__ import annotations

import numpy as np
import torch

from shard_tools import schema


def rmse(pred, target) -> float:
    """The Kaggle metric: root mean squared error over all outputs of all galaxies."""
    p = torch.as_tensor(np.array(pred, dtype=np.float64) if isinstance(pred, np.ndarray) else pred, dtype=torch.float64)
    t = torch.as_tensor(np.array(target, dtype=np.float64) if isinstance(target, np.ndarray) else target,
                        dtype=torch.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    return float(torch.sqrt(torch.mean((p - t) ** 2)))


def _tree(tree):
    if tree is None:
        from shard_tools.trees import load_tree
        return load_tree("gz2-kaggle")
    return tree


def per_question_rmse(pred: np.ndarray, target: np.ndarray, tree=None) -> dict[str, float]:
    return {q.name: rmse(pred[:, list(q.columns)], target[:, list(q.columns)]) for q in _tree(tree).questions}


def pooled_rmse(parts) -> float:
    """The RMSE of a whole from the RMSEs of disjoint parts and their sizes (number of squared errors):
    sqrt(sum n_i rmse_i^2 / sum n_i). Per-tier (n_i = rows x answers) and per-question (n_i = rows x the
    question's answers) figures recombine to the overall one this way."""
    parts = [(float(r), float(n)) for r, n in parts if n]
    total = sum(n for _, n in parts)
    return float(np.sqrt(sum(n * r * r for r, n in parts) / total)) if total else float("nan")


def tiers_of(target: np.ndarray, high: float, low: float, tree=None) -> np.ndarray:
    """Each galaxy's confidence tier, recomputed from its labels (val shards are not split by tier)."""
    if not len(target):
        return np.array([], str)
    return schema.tier_of(_tree(tree).confidence(target), high, low)


def per_tier_rmse(pred: np.ndarray, target: np.ndarray, high: float, low: float, tree=None) -> dict[str, float]:
    """RMSE per confidence tier."""
    tiers = tiers_of(target, high, low, tree)
    return {t: rmse(pred[tiers == t], target[tiers == t]) for t in schema.TIERS if (tiers == t).any()}


def evaluation_report(pred: np.ndarray, target: np.ndarray, high: float, low: float, tree=None) -> dict:
    return {"rmse": rmse(pred, target), "per_question": per_question_rmse(pred, target, tree),
            "per_tier": per_tier_rmse(pred, target, high, low, tree)}
