"""The GZ2 label schema: the 37 Kaggle columns, the decision tree (DESIGN §2), confidence and tiers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# question -> number of answers, in Kaggle column order.
_ANSWERS = {1: 3, 2: 2, 3: 2, 4: 2, 5: 4, 6: 2, 7: 3, 8: 7, 9: 3, 10: 3, 11: 6}
COLUMNS: list[str] = [f"Class{q}.{a}" for q, n in _ANSWERS.items() for a in range(1, n + 1)]
assert len(COLUMNS) == 37
CSV_HEADER: list[str] = ["GalaxyID", *COLUMNS]


@dataclass(frozen=True)
class Question:
    number: int
    text: str
    columns: tuple[int, ...]  # indices into COLUMNS
    parent: int | None  # index of the column whose value this question's answers sum to (None: sums to 1)


_TEXT = {
    1: "smooth / features or disk / star or artifact",
    2: "edge-on disk?",
    3: "bar?",
    4: "spiral arms?",
    5: "bulge prominence",
    6: "anything odd?",
    7: "how rounded (smooth)",
    8: "odd feature",
    9: "edge-on bulge shape",
    10: "arm winding",
    11: "number of arms",
}
# Which answer's vote fraction each question's answers sum to. Q6 is the Kaggle quirk: it sums to 1,
# although star/artifact voters (Class1.3) never reach it in the real tree.
_PARENT = {1: None, 2: "Class1.2", 3: "Class2.2", 4: "Class2.2", 5: "Class2.2", 6: None,
           7: "Class1.1", 8: "Class6.1", 9: "Class2.1", 10: "Class4.1", 11: "Class4.1"}


def _questions() -> list[Question]:
    out = []
    for q in _ANSWERS:
        cols = tuple(i for i, c in enumerate(COLUMNS) if c.startswith(f"Class{q}."))
        parent = None if _PARENT[q] is None else COLUMNS.index(_PARENT[q])
        out.append(Question(q, _TEXT[q], cols, parent))
    return out


QUESTIONS: list[Question] = _questions()
# Kaggle's order puts every question after the one its parent answer belongs to, so one pass in this
# order sees each parent value before its children (the tree head relies on it).
assert all(q.parent is None or q.parent < q.columns[0] for q in QUESTIONS), "a question precedes its parent"

# Default tier thresholds (DESIGN §1): high c > 0.94, medium 0.85 <= c <= 0.94, low c < 0.85.
HIGH = 0.94
LOW = 0.85
TIERS = ("high", "medium", "low")
CONFIDENCE_DEFINITION = "max of the 37 vote fractions of a row"


def confidence(labels) -> np.ndarray | float:
    """Label confidence: the largest of the 37 values of a row (or of each row of an N×37 array)."""
    arr = np.asarray(labels, dtype=np.float64)
    if arr.shape[-1] != 37:
        raise ValueError(f"expected 37 label values per row, got shape {arr.shape}")
    c = arr.max(axis=-1)
    return float(c) if c.ndim == 0 else c


def tier_of(conf, high: float = HIGH, low: float = LOW):
    """'high' if c > high, 'low' if c < low, else 'medium'. Scalar in, str out; array in, array out."""
    if high < low:
        raise ValueError(f"tier thresholds out of order: high={high} < low={low}")
    c = np.asarray(conf, dtype=np.float64)
    out = np.where(c > high, "high", np.where(c < low, "low", "medium"))
    return str(out) if out.ndim == 0 else out


def constraint_errors(labels) -> np.ndarray:
    """Per row, the largest |sum of a question's answers - its parent value| (N×37 -> N)."""
    arr = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    worst = np.zeros(len(arr))
    for q in QUESTIONS:
        total = arr[:, list(q.columns)].sum(axis=1)
        target = 1.0 if q.parent is None else arr[:, q.parent]
        worst = np.maximum(worst, np.abs(total - target))
    return worst


def check_constraints(labels, tol: float = 1e-4) -> np.ndarray:
    """Per row, True where every question's answers sum to its parent's value within `tol`.

    Also requires every value to be finite and inside [-tol, 1 + tol]."""
    arr = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    finite = np.isfinite(arr).all(axis=1)
    in_range = ((arr >= -tol) & (arr <= 1 + tol)).all(axis=1)
    with np.errstate(invalid="ignore"):
        tree_ok = constraint_errors(arr) <= tol
    return finite & in_range & tree_ok


def label_problem(row, tol: float = 1e-4) -> str | None:
    """Why one row of 37 values is unusable, in words, or None when it is fine."""
    arr = np.asarray(row, dtype=np.float64)
    bad = [COLUMNS[i] for i in np.flatnonzero(~np.isfinite(arr))]
    if bad:
        return f"non-finite label in {', '.join(bad)}"
    bad = [f"{COLUMNS[i]}={arr[i]:g}" for i in np.flatnonzero((arr < -tol) | (arr > 1 + tol))]
    if bad:
        return f"label out of [0, 1]: {', '.join(bad)}"
    for q in QUESTIONS:
        total = arr[list(q.columns)].sum()
        target = 1.0 if q.parent is None else arr[q.parent]
        if abs(total - target) > tol:
            what = "1" if q.parent is None else f"{COLUMNS[q.parent]}={target:.6g}"
            return (f"decision tree violated: Q{q.number} answers sum to {total:.6g}, expected {what} "
                    f"(tolerance {tol:g})")
    return None
