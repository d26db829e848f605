"""The trainer on other decision trees: the GZ2 catalogue's own tree from vote counts with the
Dirichlet-multinomial loss, and a two-question tree of a user's own with string ids."""
import json

import numpy as np
import pytest
import torch

from gzfast import checkpoint as ckpt
from gzfast.train import main
from shard_tools.layout import PackedSet

TINY = ["--model", "resnet10t", "--image-size", "32", "--crop-size", "128", "--batch-size", "16", "--workers", "0",
        "--loader", "pil", "--log-every", "2", "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--no-plot",
        "--ceiling-probe", "0"]


def epochs(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


@pytest.mark.slow
def test_dirichlet_on_gz2_vote_counts_reports_rmse_and_nll_per_question_of_that_tree(gz2_count_shards, tmp_path):
    tree = PackedSet.open(gz2_count_shards).tree
    run = tmp_path / "run"
    assert main(["--shards", str(gz2_count_shards), "--out", str(run), *TINY, "--epochs", "2", "--loss", "dirichlet"]) == 0
    records = epochs(run)
    names = [q.name for q in tree.questions]
    for r in records:
        assert list(r["val_per_question"]) == names and list(r["val_nll_per_question"]) == names
        assert 0 < r["val_rmse"] < 0.5 and np.isfinite(r["val_nll"]) and r["val_nll"] > 0
        assert r["val_nll"] == sum(r["val_nll_per_question"].values())
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # the NLL of the counts goes down
    config = json.loads((run / "config.json").read_text())
    assert (config["loss"], config["head"]) == ("dirichlet", "dirichlet")
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["data"]["tree"]["name"] == "gz2" and state["data"]["has_counts"] is True
    assert state["model"]["backbone.fc.weight"].shape[0] == tree.n  # one output per answer of the tree


@pytest.mark.slow
def test_a_two_question_tree_of_ones_own_trains_with_the_tree_head(ring_merger_shards, tmp_path):
    data = PackedSet.open(ring_merger_shards)
    assert data.id_kind == "string" and data.tree.n == 4
    run = tmp_path / "run"
    assert main(["--shards", str(ring_merger_shards), "--out", str(run), *TINY, "--epochs", "1", "--head", "tree"]) == 0
    [record] = epochs(run)
    assert set(record["val_per_question"]) == {"ring", "merger"} and 0 < record["val_rmse"] < 0.6
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["data"]["tree"]["name"] == "ring-merger" and state["model"]["backbone.fc.weight"].shape[0] == 4
    # the tree head's outputs of the trained model obey the tree: each question's answers sum to 1
    from gzfast.model import GZ2Model
    model = GZ2Model("resnet10t", "tree", data.tree)
    model.load_state_dict(state["model"])
    out = model.eval()(torch.randn(3, 3, 32, 32)).detach().numpy()
    assert np.allclose(out[:, 0] + out[:, 1], 1, atol=1e-5) and np.allclose(out[:, 2] + out[:, 3], 1, atol=1e-5)


@pytest.mark.slow
def test_the_crop_defaults_to_the_central_half_of_the_packed_side_and_is_checked_against_it(tmp_path, capsys):
    """A set packed at 128 px: the default crop is 64 px (the study's 212 of 424), and a crop that cannot
    rotate inside 128 px is refused in one line before anything trains."""
    from shard_tools.pack import CatalogSpec, PackOptions, pack_catalog
    from shard_tools.synth import synthesize
    from shard_tools.trees import load_tree

    from helpers import REPO
    synthesize(tmp_path / "cat", 60, seed=2, workers=1, progress=False, layout="ring-merger")
    shards = tmp_path / "shards"
    pack_catalog(CatalogSpec(tmp_path / "cat" / "catalog.csv", tmp_path / "cat" / "images",
                             load_tree(REPO / "docs/examples/ring-merger.yaml"), side=128), shards,
                 PackOptions(shard_size=16, val_fraction=0.2), workers=1, progress=False)
    flags = [f for f in TINY if f not in ("--crop-size", "128")]
    run = tmp_path / "run"
    assert main(["--shards", str(shards), "--out", str(run), *flags, "--epochs", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["crop_size"] == 64
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["--shards", str(shards), "--out", str(refused), *flags, "--epochs", "1", "--crop-size", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: crop_size 100") and "128 px image" in err[0], err
    assert not refused.exists()
