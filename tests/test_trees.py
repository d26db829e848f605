"""Decision trees as data: the built-in ones, the label conversions, and trees from YAML files."""
from pathlib import Path

import numpy as np
import pytest

from shard_tools import schema
from shard_tools.synth_catalogs import ring_merger_tree
from shard_tools.trees import BUILTIN_TREES, Tree, TreeError, load_tree

from helpers import REPO

EXAMPLE = REPO / "docs" / "examples" / "ring-merger.yaml"


def parents(tree: Tree) -> dict[str, str | None]:
    return {q.name: None if q.parent is None else tree.columns[q.parent] for q in tree.questions}


def test_gz2_kaggle_is_todays_schema():
    tree = load_tree("gz2-kaggle")
    assert list(tree.columns) == schema.COLUMNS and schema.CSV_HEADER == ["GalaxyID", *tree.columns]
    assert [q.name for q in tree.questions] == [f"Q{q.number}" for q in schema.QUESTIONS]
    assert [(q.columns, q.parent) for q in tree.questions] == [(q.columns, q.parent) for q in schema.QUESTIONS]
    assert schema.CONFIDENCE_DEFINITION == "max of the 37 vote fractions of a row"
    assert tree.count_columns() is None and tree.fraction_columns() == list(tree.columns)


def test_gz2_tree_names_and_dependencies_match_the_kaggle_table():
    gz2, kaggle = load_tree("gz2"), load_tree("gz2-kaggle")
    assert gz2.n == kaggle.n and [len(q.columns) for q in gz2.questions] == [len(q.columns) for q in kaggle.questions]
    for name in ("t01_smooth_or_features_a01_smooth", "t02_edgeon_a04_yes", "t03_bar_a06_bar", "t04_spiral_a08_spiral",
                 "t05_bulge_prominence_a10_no_bulge", "t06_odd_a14_yes", "t07_rounded_a16_completely_round",
                 "t08_odd_feature_a19_ring", "t08_odd_feature_a38_dust_lane", "t09_bulge_shape_a25_rounded",
                 "t10_arms_winding_a28_tight", "t11_arms_number_a31_1", "t11_arms_number_a37_cant_tell"):
        assert name in gz2.columns, name
    # the same tree: every question's parent is the answer at the same place in the Kaggle order
    assert [q.parent for q in gz2.questions] == [q.parent for q in kaggle.questions]
    assert parents(gz2)["t03_bar"] == "t02_edgeon_a05_no" and parents(gz2)["t06_odd"] is None
    assert gz2.count_columns()[0] == "t01_smooth_or_features_a01_smooth_count" and gz2.id_column == "dr7objid"


def test_gz_decals_follows_zoobots_dr5_tree():
    tree = load_tree("gz-decals")
    assert tree.n == 34 and tree.columns[0] == "smooth-or-featured_smooth" and tree.columns[-1] == "merging_merger"
    assert parents(tree) == {
        "smooth-or-featured": None, "disk-edge-on": "smooth-or-featured_featured-or-disk",
        "has-spiral-arms": "disk-edge-on_no", "bar": "disk-edge-on_no", "bulge-size": "disk-edge-on_no",
        "how-rounded": "smooth-or-featured_smooth", "edge-on-bulge": "disk-edge-on_yes",
        "spiral-winding": "has-spiral-arms_yes", "spiral-arm-count": "has-spiral-arms_yes", "merging": None}
    assert tree.count_columns()[1] == "smooth-or-featured_featured-or-disk"  # counts under the answer's own name
    assert tree.fraction_columns()[1] == "smooth-or-featured_featured-or-disk_fraction" and tree.id_column == "iauname"


def test_counts_become_cumulative_fractions_by_hand():
    tree = load_tree("gz-decals")
    counts = np.zeros(tree.n)
    col = {c: i for i, c in enumerate(tree.columns)}
    # 10 volunteers: 6 featured, 4 smooth; of the featured, 5 answered edge-on (1 yes, 4 no): the total (5)
    # is not the parent's count (6), as in real catalogues
    for name, n in {"smooth-or-featured_smooth": 4, "smooth-or-featured_featured-or-disk": 6, "disk-edge-on_yes": 1,
                    "disk-edge-on_no": 4, "how-rounded_round": 4, "merging_none": 10}.items():
        counts[col[name]] = n
    frac = tree.fractions_from_counts(counts)
    assert frac[col["smooth-or-featured_featured-or-disk"]] == pytest.approx(0.6)
    assert frac[col["disk-edge-on_yes"]] == pytest.approx(0.6 * 1 / 5)
    assert frac[col["disk-edge-on_no"]] == pytest.approx(0.6 * 4 / 5)
    assert frac[col["how-rounded_round"]] == pytest.approx(0.4)
    assert frac[col["bar_strong"]] == 0  # nobody answered bar: 0, and the tree allows that
    assert tree.check_constraints(frac)[0] and tree.label_problem(frac) is None
    assert tree.confidence(frac) == pytest.approx(1.0)  # merging_none
    # per-question fractions with NaN where nobody was asked convert the same way
    perq = tree.per_question(frac)
    perq[tree.questions[3].columns[0]] = np.nan
    assert np.allclose(tree.cumulative_from_per_question(np.where(frac > 0, perq, np.nan)), frac)


def test_per_question_is_uniform_for_an_unanswered_question_and_round_trips():
    tree = load_tree("gz2")
    counts = np.random.default_rng(0).integers(1, 20, (5, tree.n)).astype(float)  # every question answered
    frac = tree.fractions_from_counts(counts)
    perq = tree.per_question(frac)
    for q in tree.questions:
        assert np.allclose(perq[:, list(q.columns)].sum(1), 1)
    assert np.allclose(tree.cumulative_from_per_question(perq), frac)
    bar = tree.questions[2]
    counts[0, list(bar.columns)] = 0
    assert np.allclose(tree.per_question(tree.fractions_from_counts(counts))[0, list(bar.columns)], 0.5)


def test_kaggle_rule_stays_strict_about_unanswered_questions():
    row = np.zeros(37)
    row[schema.COLUMNS.index("Class1.2")] = 1.0
    row[schema.COLUMNS.index("Class6.2")] = 1.0  # Q2 (asked after Class1.2 = 1) got nothing
    assert "Q2" in schema.label_problem(row)
    gz2 = load_tree("gz2")
    assert gz2.label_problem(row) is None  # a count catalogue may leave a question unanswered


def test_the_example_yaml_loads_with_yes_and_no_as_words():
    tree = load_tree(str(EXAMPLE))
    assert tree.name == "ring-merger" and tree.columns == ("ring_yes", "ring_no", "merger_yes", "merger_no")
    assert [q.parent for q in tree.questions] == [None, None]
    assert tree == ring_merger_tree()  # synth's ring-merger catalogue is for this tree
    assert Tree.from_dict(tree.to_dict()) == tree
    for name in BUILTIN_TREES:
        assert Tree.from_dict(load_tree(name).to_dict()) == load_tree(name)


MALFORMED = {
    "unknown-parent": ("name: t\nquestions:\n  - {name: a, answers: [x, y]}\n  - {name: b, answers: [x, y], "
                       "asked_after: a_z}\n", "asked after a_z, which is no answer"),
    "cycle": ("name: t\nquestions:\n  - {name: a, answers: [x, y], asked_after: b_x}\n"
              "  - {name: b, answers: [x, y], asked_after: a_x}\n", "cycle (a -> b -> a)"),
    "self-cycle": ("name: t\nquestions:\n  - {name: a, answers: [x, y], asked_after: a_x}\n", "cycle (a -> a)"),
    "duplicate-answer": ("name: t\nanswer_column: '{answer}'\nquestions:\n  - {name: a, answers: [x, y]}\n"
                         "  - {name: b, answers: [x, z]}\n", "answer column x appears twice"),
    "one-answer": ("name: t\nquestions:\n  - {name: a, answers: [only]}\n", "has 1 answer(s); a question needs at least 2"),
    "child-first": ("name: t\nquestions:\n  - {name: b, answers: [x, y], asked_after: a_x}\n  - {name: a, answers: [x, y]}\n",
                    "listed before a"),
    "unknown-key": ("name: t\nquestionz: []\n", "unknown key(s) questionz"),
    "not-yaml": ("name: [t\n", "not valid YAML"),
    "no-questions": ("name: t\n", "non-empty list of questions"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_tree_is_refused_in_one_line_naming_the_file(case, tmp_path):
    text, expect = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(TreeError) as info:
        load_tree(str(path))
    message = str(info.value)
    assert message.startswith(str(path)) and expect in message and "\n" not in message, message


def test_an_unknown_name_says_what_exists(tmp_path):
    with pytest.raises(TreeError, match="gz2-kaggle, gz2, gz-decals"):
        load_tree("gz3")
    with pytest.raises(TreeError, match="is not a file"):
        load_tree(str(tmp_path))
    assert Path(EXAMPLE).is_file()
