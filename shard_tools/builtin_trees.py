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

GZ2_KAGGLE = {
    "name": "gz2-kaggle",
    "answer_column": "{answer}",
    "count_column": None,           # Kaggle published fractions only
    "fraction_column": "{column}",  # the answer names themselves
    "fractions": "cumulative",      # already the share of all of a galaxy's volunteers
    "id_column": "GalaxyID",
    "file_column": None,            # images are <GalaxyID>.jpg
    "allow_unanswered": False,      # Kaggle's rows fill every question
    "questions": [
        {"name": "Q1", "text": "smooth / features or disk / star or artifact",
         "answers": ["Class1.1", "Class1.2", "Class1.3"], "asked_after": None},
        {"name": "Q2", "text": "edge-on disk?", "answers": ["Class2.1", "Class2.2"], "asked_after": "Class1.2"},
        {"name": "Q3", "text": "bar?", "answers": ["Class3.1", "Class3.2"], "asked_after": "Class2.2"},
        {"name": "Q4", "text": "spiral arms?", "answers": ["Class4.1", "Class4.2"], "asked_after": "Class2.2"},
        {"name": "Q5", "text": "bulge prominence", "answers": ["Class5.1", "Class5.2", "Class5.3", "Class5.4"],
         "asked_after": "Class2.2"},
        # The Kaggle quirk: Q6 sums to 1, although star/artifact voters (Class1.3) never reach it in the real tree.
        {"name": "Q6", "text": "anything odd?", "answers": ["Class6.1", "Class6.2"], "asked_after": None},
        {"name": "Q7", "text": "how rounded (smooth)", "answers": ["Class7.1", "Class7.2", "Class7.3"],
         "asked_after": "Class1.1"},
        {"name": "Q8", "text": "odd feature",
         "answers": ["Class8.1", "Class8.2", "Class8.3", "Class8.4", "Class8.5", "Class8.6", "Class8.7"],
         "asked_after": "Class6.1"},
        {"name": "Q9", "text": "edge-on bulge shape", "answers": ["Class9.1", "Class9.2", "Class9.3"],
         "asked_after": "Class2.1"},
        {"name": "Q10", "text": "arm winding", "answers": ["Class10.1", "Class10.2", "Class10.3"],
         "asked_after": "Class4.1"},
        {"name": "Q11", "text": "number of arms",
         "answers": ["Class11.1", "Class11.2", "Class11.3", "Class11.4", "Class11.5", "Class11.6"],
         "asked_after": "Class4.1"},
    ],
}

GZ2 = {
    "name": "gz2",
    "answer_column": "{question}_{answer}",
    "count_column": "{column}_count",
    "fraction_column": "{column}_fraction",
    "fractions": "per-question",
    "id_column": "dr7objid",
    "file_column": "file_loc",
    "allow_unanswered": True,
    "questions": [
        {"name": "t01_smooth_or_features", "text": "smooth / features or disk / star or artifact",
         "answers": ["a01_smooth", "a02_features_or_disk", "a03_star_or_artifact"], "asked_after": None},
        {"name": "t02_edgeon", "text": "edge-on disk?", "answers": ["a04_yes", "a05_no"],
         "asked_after": "t01_smooth_or_features_a02_features_or_disk"},
        {"name": "t03_bar", "text": "bar?", "answers": ["a06_bar", "a07_no_bar"], "asked_after": "t02_edgeon_a05_no"},
        {"name": "t04_spiral", "text": "spiral arms?", "answers": ["a08_spiral", "a09_no_spiral"],
         "asked_after": "t02_edgeon_a05_no"},
        {"name": "t05_bulge_prominence", "text": "bulge prominence",
         "answers": ["a10_no_bulge", "a11_just_noticeable", "a12_obvious", "a13_dominant"],
         "asked_after": "t02_edgeon_a05_no"},
        # Asked of everyone, as in the Kaggle table (star/artifact voters included).
        {"name": "t06_odd", "text": "anything odd?", "answers": ["a14_yes", "a15_no"], "asked_after": None},
        {"name": "t07_rounded", "text": "how rounded (smooth)",
         "answers": ["a16_completely_round", "a17_in_between", "a18_cigar_shaped"],
         "asked_after": "t01_smooth_or_features_a01_smooth"},
        {"name": "t08_odd_feature", "text": "odd feature",
         "answers": ["a19_ring", "a20_lens_or_arc", "a21_disturbed", "a22_irregular", "a23_other", "a24_merger",
                     "a38_dust_lane"],
         "asked_after": "t06_odd_a14_yes"},
        {"name": "t09_bulge_shape", "text": "edge-on bulge shape", "answers": ["a25_rounded", "a26_boxy", "a27_no_bulge"],
         "asked_after": "t02_edgeon_a04_yes"},
        {"name": "t10_arms_winding", "text": "arm winding", "answers": ["a28_tight", "a29_medium", "a30_loose"],
         "asked_after": "t04_spiral_a08_spiral"},
        {"name": "t11_arms_number", "text": "number of arms",
         "answers": ["a31_1", "a32_2", "a33_3", "a34_4", "a36_more_than_4", "a37_cant_tell"],
         "asked_after": "t04_spiral_a08_spiral"},
    ],
}

GZ_DECALS = {
    "name": "gz-decals",
    "answer_column": "{question}_{answer}",
    "count_column": "{column}",
    "fraction_column": "{column}_fraction",
    "fractions": "per-question",
    "id_column": "iauname",
    "file_column": "file_loc",
    "allow_unanswered": True,
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
