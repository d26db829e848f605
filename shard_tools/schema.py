"""The Kaggle GZ2 label schema, as the gz2-kaggle tree gives it: columns, questions, confidence and tiers.

These names predate `trees.py` and stay for the code that knows only the Kaggle set; every function here is
the gz2-kaggle tree's (see trees.py for any other tree).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .trees import GZ2_KAGGLE

TREE = GZ2_KAGGLE
COLUMNS: list[str] = list(TREE.columns)
CSV_HEADER: list[str] = [TREE.id_column, *COLUMNS]


@dataclass(frozen=True)
class Question:
    number: int
    text: str
    columns: tuple[int, ...]  # indices into COLUMNS
    parent: int | None  # index of the column whose value this question's answers sum to (None: sums to 1)


# gz2-kaggle names its questions Q1..Q11
QUESTIONS: list[Question] = [Question(int(q.name[1:]), q.text, q.columns, q.parent) for q in TREE.questions]

# Default tier thresholds (docs/design.md §1): high c > 0.94, medium 0.85 <= c <= 0.94, low c < 0.85.
HIGH = 0.94
LOW = 0.85
TIERS = ("high", "medium", "low")
CONFIDENCE_DEFINITION = TREE.confidence_definition

confidence = TREE.confidence
constraint_errors = TREE.constraint_errors
check_constraints = TREE.check_constraints
label_problem = TREE.label_problem


def tier_of(conf, high: float = HIGH, low: float = LOW):
    """'high' if c > high, 'low' if c < low, else 'medium'. Scalar in, str out; array in, array out."""
    if high < low:
        raise ValueError(f"tier thresholds out of order: high={high} < low={low}")
    c = np.asarray(conf, dtype=np.float64)
    out = np.where(c > high, "high", np.where(c < low, "low", "medium"))
    return str(out) if out.ndim == 0 else out
