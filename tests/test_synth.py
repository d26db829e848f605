import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shard_tools import schema
from shard_tools.galaxies import Renderer, make_galaxy
from shard_tools.synth import synthesize


def test_synthetic_labels_obey_the_tree_and_cover_all_tiers(synth_data):
    df = pd.read_csv(synth_data / "training_solutions_rev1.csv")
    assert list(df.columns) == schema.CSV_HEADER and len(df) == 360
    labels = df[schema.COLUMNS].to_numpy()
    assert schema.check_constraints(labels, tol=1e-5).all()
    q6 = labels[:, [schema.COLUMNS.index("Class6.1"), schema.COLUMNS.index("Class6.2")]].sum(1)
    assert np.allclose(q6, 1, atol=1e-5)  # the Kaggle quirk
    tiers = schema.tier_of(schema.confidence(labels))
    for t in schema.TIERS:
        assert (tiers == t).mean() >= 0.20, t


def test_synthetic_images_look_like_the_kaggle_ones(synth_data):
    files = sorted((synth_data / "images_training_rev1").glob("*.jpg"))
    assert len(files) == 360 and len(list((synth_data / "images_test_rev1").glob("*.jpg"))) == 40
    sizes = np.array([f.stat().st_size for f in files]) / 1024
    lo, hi = np.percentile(sizes, [5, 95])
    assert 7 <= lo and hi <= 26, (lo, hi)  # the real range is 8-25 KB
    im = Image.open(files[0])
    assert im.size == (424, 424) and im.mode == "RGB" and im.format == "JPEG"
    pix = np.asarray(im, dtype=np.float32)
    assert np.median(pix) < 40  # dark sky
    assert pix[170:254, 170:254].mean() > pix[:60, :60].mean()  # the galaxy sits in the middle


@pytest.mark.slow
def test_labels_follow_the_rendered_morphology():
    renderer = Renderer(0)
    rows = np.array([make_galaxy(100_000 + i, 3, renderer)[1] for i in range(300)])
    smooth, features = rows[:, 0], rows[:, 1]
    # bright central concentration vs extended disks: the image must tell Q1 apart
    assert ((smooth > 0.6) | (features > 0.6)).mean() > 0.5


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(a, 12, 3, seed=5, workers=1, progress=False)
    synthesize(b, 12, 3, seed=5, workers=2, progress=False)
    for f in sorted(a.rglob("*.jpg")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
    assert (a / "training_solutions_rev1.csv").read_bytes() == (b / "training_solutions_rev1.csv").read_bytes()
    c = tmp_path / "c"
    synthesize(c, 12, 3, seed=6, workers=1, progress=False)
    assert (a / "training_solutions_rev1.csv").read_bytes() != (c / "training_solutions_rev1.csv").read_bytes()


def test_rerun_is_a_no_op(tmp_path, capsys):
    synthesize(tmp_path, 5, 1, seed=0, workers=1, progress=False)
    stamp = (tmp_path / "training_solutions_rev1.csv").stat().st_mtime_ns
    synthesize(tmp_path, 5, 1, seed=0, workers=1, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "training_solutions_rev1.csv").stat().st_mtime_ns == stamp


def test_catalogue_layouts_vary_volunteers_and_replace_only_their_own_files(tmp_path, capsys):
    import pytest

    from shard_tools.synth import SynthError
    from shard_tools.trees import load_tree
    out = tmp_path / "gz2"
    synthesize(out, 30, seed=3, workers=2, progress=False, layout="gz2")
    tree = load_tree("gz2")
    df = pd.read_csv(out / "catalog.csv", dtype={"dr7objid": str})
    counts = df[tree.count_columns()].to_numpy()
    voters = counts[:, list(tree.questions[0].columns)].sum(1)
    assert voters.min() >= 5 and voters.max() <= 60 and len(set(voters)) > 5
    assert np.allclose(tree.fractions_from_counts(counts)[:, 0], counts[:, 0] / voters)
    first = sorted(p.relative_to(out) for p in (out / "images").rglob("*.*"))
    assert len(first) == 30 and {p.suffix for p in first} == {".jpg", ".png"}
    (out / "images" / "mine.txt").write_text("mine\n")
    synthesize(out, 30, seed=3, workers=1, progress=False, layout="gz2")
    assert "nothing to do" in capsys.readouterr().out
    synthesize(out, 12, seed=3, workers=1, progress=False, layout="ring-merger")  # replaces the gz2 set
    assert not any((out / "images" / p).exists() for p in first)
    assert (out / "images" / "mine.txt").read_text() == "mine\n"
    assert list(pd.read_csv(out / "catalog.csv").columns) == ["id_str", "file_loc", "ring_yes_count", "ring_no_count",
                                                             "merger_yes_count", "merger_no_count"]
    with pytest.raises(SynthError, match="--n-test is for the kaggle layout"):
        synthesize(tmp_path / "x", 5, 2, layout="gz2")
