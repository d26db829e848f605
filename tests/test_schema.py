import numpy as np
import pandas as pd
import pytest

from shard_tools import schema


def test_columns_and_questions_follow_kaggle_order():
    assert schema.COLUMNS[0] == "Class1.1" and schema.COLUMNS[-1] == "Class11.6" and len(schema.COLUMNS) == 37
    assert [q.number for q in schema.QUESTIONS] == list(range(1, 12))
    assert sum(len(q.columns) for q in schema.QUESTIONS) == 37
    parents = {q.number: (schema.COLUMNS[q.parent] if q.parent is not None else None) for q in schema.QUESTIONS}
    assert parents == {1: None, 2: "Class1.2", 3: "Class2.2", 4: "Class2.2", 5: "Class2.2", 6: None,
                       7: "Class1.1", 8: "Class6.1", 9: "Class2.1", 10: "Class4.1", 11: "Class4.1"}


def test_real_rows_obey_the_tree_and_split_into_thirds(gz2_dir):
    df = pd.read_csv(gz2_dir / "training_solutions_subset.csv")
    assert list(df.columns) == schema.CSV_HEADER and len(df) == 12316
    labels = df[schema.COLUMNS].to_numpy()
    assert schema.check_constraints(labels, tol=2e-6).all()
    tiers = schema.tier_of(schema.confidence(labels))
    fractions = {t: 100 * (tiers == t).mean() for t in schema.TIERS}
    assert fractions["high"] == pytest.approx(33.1, abs=0.2)
    assert fractions["medium"] == pytest.approx(35.2, abs=0.2)
    assert fractions["low"] == pytest.approx(31.7, abs=0.2)


def test_confidence_and_tier_boundaries():
    row = np.zeros(37)
    row[0] = 0.94
    assert schema.confidence(row) == 0.94
    assert schema.tier_of(0.94) == "medium" and schema.tier_of(0.9400001) == "high"
    assert schema.tier_of(0.85) == "medium" and schema.tier_of(0.8499) == "low"
    assert schema.tier_of(0.9, high=0.95, low=0.91) == "low"
    with pytest.raises(ValueError):
        schema.tier_of(0.9, high=0.5, low=0.8)


def test_constraint_checker_catches_violations(gz2_dir):
    df = pd.read_csv(gz2_dir / "training_solutions_subset.csv", nrows=50)
    good = df[schema.COLUMNS].to_numpy()
    bad = good.copy()
    bad[:, schema.COLUMNS.index("Class3.1")] += 0.05   # Q3 no longer sums to Class2.2
    assert schema.check_constraints(good).all()
    assert not schema.check_constraints(bad).any()
    assert "Q3" in schema.label_problem(bad[0])
    nan = good[0].copy()
    nan[5] = np.nan
    assert "non-finite" in schema.label_problem(nan)
    high = good[0].copy()
    high[0] = 1.5
    assert "out of [0, 1]" in schema.label_problem(high)
