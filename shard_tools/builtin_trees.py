"""The built-in decision trees, as data in the form a tree's YAML file has (see `trees.load_tree`).

Sources of the facts (names, answer order, which answer asks each question):
- gz2-kaggle: the Kaggle "Galaxy Zoo - The Galaxy Challenge" solutions file (`ClassN.M`) and its decision
  tree (docs/design.md §2; checked on the real rows to 2e-6), including its quirk: Q6 sums to 1.
- gz2: the GZ2 data release (Willett et al. 2013; Hart et al. 2016): tasks t01..t11, answers a01..a38,
  catalogue columns `<answer>_count` and `<answer>_fraction` (the fraction of the question's votes), id
  `dr7objid`. Its dependencies are GZ2's tree, the same as the Kaggle table.
- gz-decals: Galaxy Zoo DECaLS DR5 (Walmsley et al. 2022) as zoobot describes it (`decals_pairs`, the dr5
  dependencies): counts in the column named by the answer itself, fractions in `<answer>_fraction`, id
  `iauname`.
"""
from __future__ import annotations

# The GZ2 tree, once: per question its Kaggle name, its GZ2 task, its text, its answers (Kaggle column, GZ2
# answer) and the Kaggle column of the answer that asks it. The two trees below are this table named two ways.
_GZ2_TABLE = [
    ("Q1", "t01_smooth_or_features", "smooth / features or disk / star or artifact",
     [("Class1.1", "a01_smooth"), ("Class1.2", "a02_features_or_disk"), ("Class1.3", "a03_star_or_artifact")], None),
    ("Q2", "t02_edgeon", "edge-on disk?", [("Class2.1", "a04_yes"), ("Class2.2", "a05_no")], "Class1.2"),
    ("Q3", "t03_bar", "bar?", [("Class3.1", "a06_bar"), ("Class3.2", "a07_no_bar")], "Class2.2"),
    ("Q4", "t04_spiral", "spiral arms?", [("Class4.1", "a08_spiral"), ("Class4.2", "a09_no_spiral")], "Class2.2"),
    ("Q5", "t05_bulge_prominence", "bulge prominence",
     [("Class5.1", "a10_no_bulge"), ("Class5.2", "a11_just_noticeable"), ("Class5.3", "a12_obvious"),
      ("Class5.4", "a13_dominant")], "Class2.2"),
    # The Kaggle quirk, which GZ2's catalogue shares: asked of everyone, star/artifact voters included (sums to 1).
    ("Q6", "t06_odd", "anything odd?", [("Class6.1", "a14_yes"), ("Class6.2", "a15_no")], None),
    ("Q7", "t07_rounded", "how rounded (smooth)",
     [("Class7.1", "a16_completely_round"), ("Class7.2", "a17_in_between"), ("Class7.3", "a18_cigar_shaped")], "Class1.1"),
    ("Q8", "t08_odd_feature", "odd feature",
     [("Class8.1", "a19_ring"), ("Class8.2", "a20_lens_or_arc"), ("Class8.3", "a21_disturbed"),
      ("Class8.4", "a22_irregular"), ("Class8.5", "a23_other"), ("Class8.6", "a24_merger"), ("Class8.7", "a38_dust_lane")],
     "Class6.1"),
    ("Q9", "t09_bulge_shape", "edge-on bulge shape",
     [("Class9.1", "a25_rounded"), ("Class9.2", "a26_boxy"), ("Class9.3", "a27_no_bulge")], "Class2.1"),
    ("Q10", "t10_arms_winding", "arm winding",
     [("Class10.1", "a28_tight"), ("Class10.2", "a29_medium"), ("Class10.3", "a30_loose")], "Class4.1"),
    ("Q11", "t11_arms_number", "number of arms",
     [("Class11.1", "a31_1"), ("Class11.2", "a32_2"), ("Class11.3", "a33_3"), ("Class11.4", "a34_4"),
      ("Class11.5", "a36_more_than_4"), ("Class11.6", "a37_cant_tell")], "Class4.1"),
]
_GZ2_COLUMN = {kaggle: f"{task}_{answer}" for _, task, _, answers, _ in _GZ2_TABLE for kaggle, answer in answers}

GZ2_KAGGLE = {
    "name": "gz2-kaggle",
    "answer_column": "{answer}",
    "count_column": None,           # Kaggle published fractions only
    "fraction_column": "{column}",  # the answer names themselves
    "fractions": "cumulative",      # already the share of all of a galaxy's volunteers
    "id_column": "GalaxyID",
    "file_column": None,            # images are <GalaxyID>.jpg
    "allow_unanswered": False,      # Kaggle's rows fill every question
    "questions": [{"name": q, "text": text, "answers": [k for k, _ in answers], "asked_after": parent}
                  for q, _, text, answers, parent in _GZ2_TABLE],
}

# How the volunteer catalogues (GZ2's, DECaLS') spell their columns: per-question fractions in `_fraction`
# columns, image paths in `file_loc`, and questions some galaxies got no vote on.
_CATALOGUE = {"answer_column": "{question}_{answer}", "fraction_column": "{column}_fraction", "fractions": "per-question",
              "file_column": "file_loc", "allow_unanswered": True}

GZ2 = {
    "name": "gz2", **_CATALOGUE, "count_column": "{column}_count", "id_column": "dr7objid",
    "questions": [{"name": task, "text": text, "answers": [a for _, a in answers],
                   "asked_after": _GZ2_COLUMN[parent] if parent else None}
                  for _, task, text, answers, parent in _GZ2_TABLE],
}

GZ_DECALS = {
    "name": "gz-decals", **_CATALOGUE, "count_column": "{column}", "id_column": "iauname",  # counts: the answer's own column
    "questions": [
        {"name": "smooth-or-featured", "text": "smooth / featured or disk / artifact",
         "answers": ["smooth", "featured-or-disk", "artifact"], "asked_after": None},
        {"name": "disk-edge-on", "text": "edge-on disk?", "answers": ["yes", "no"],
         "asked_after": "smooth-or-featured_featured-or-disk"},
        {"name": "has-spiral-arms", "text": "spiral arms?", "answers": ["yes", "no"], "asked_after": "disk-edge-on_no"},
        {"name": "bar", "text": "bar?", "answers": ["strong", "weak", "no"], "asked_after": "disk-edge-on_no"},
        {"name": "bulge-size", "text": "bulge size", "answers": ["dominant", "large", "moderate", "small", "none"],
         "asked_after": "disk-edge-on_no"},
        {"name": "how-rounded", "text": "how rounded (smooth)", "answers": ["round", "in-between", "cigar-shaped"],
         "asked_after": "smooth-or-featured_smooth"},
        {"name": "edge-on-bulge", "text": "edge-on bulge shape", "answers": ["boxy", "none", "rounded"],
         "asked_after": "disk-edge-on_yes"},
        {"name": "spiral-winding", "text": "arm winding", "answers": ["tight", "medium", "loose"],
         "asked_after": "has-spiral-arms_yes"},
        {"name": "spiral-arm-count", "text": "number of arms",
         "answers": ["1", "2", "3", "4", "more-than-4", "cant-tell"], "asked_after": "has-spiral-arms_yes"},
        # zoobot treats it as asked of everyone (volunteers who answered "artifact" skip it: unanswered then).
        {"name": "merging", "text": "merging or disturbed?",
         "answers": ["none", "minor-disturbance", "major-disturbance", "merger"], "asked_after": None},
    ],
}

BUILTIN = {t["name"]: t for t in (GZ2_KAGGLE, GZ2, GZ_DECALS)}
