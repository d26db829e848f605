"""Embeddings: the backbone's pooled features per galaxy, through the same chunked writer as prediction;
with 8 views an image and its 90-degree rotation get the same features."""
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from fake_runs import fake_run
from PIL import Image

from gzfast import embed as embed_mod
from gzfast.inference import load_run, pooled_features

ROTATED = 10**12  # id offset of the rotated copies


@pytest.fixture(scope="module")
def rotated_folder(gz2_dir, tmp_path_factory):
    """16 real GZ2 test JPEGs and each one rotated by 90 degrees (PIL transpose, saved as a JPEG)."""
    folder = tmp_path_factory.mktemp("rotated")
    for p in sorted((gz2_dir / "test_images").glob("*.jpg"))[:16]:
        shutil.copy(p, folder / p.name)
        Image.open(p).transpose(Image.Transpose.ROTATE_90).save(folder / f"{int(p.stem) + ROTATED}.jpg",
                                                                quality=95, subsampling=0)
    return folder


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("runs") / "atto")  # a random convnext_atto, 32 px from a 128 px crop


def cosines(table: pd.DataFrame) -> np.ndarray:
    t = table.set_index("GalaxyID")
    ids = [i for i in t.index if i < ROTATED]
    a, b = t.loc[ids].to_numpy(np.float64), t.loc[[i + ROTATED for i in ids]].to_numpy(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_eight_views_give_an_image_and_its_rotation_the_same_features(kaggle_run, rotated_folder, tmp_path, capsys):
    outs = {}
    for k in (1, 8):
        out = tmp_path / f"e{k}.parquet"
        assert embed_mod.main(["--run", str(kaggle_run), "--images", str(rotated_folder), "--out", str(out),
                               "--tta", str(k), "--workers", "1"]) == 0
        outs[k] = pd.read_parquet(out)
    assert "32 galaxies x 320 features" in capsys.readouterr().out
    table = outs[8]
    assert list(table.columns) == ["GalaxyID", *(f"feat_{i:03d}" for i in range(320))]  # convnext_atto: 320
    assert table.iloc[:, 1:].dtypes.eq(np.float32).all() and len(table) == 32
    assert cosines(outs[8]).min() >= 0.999
    assert cosines(outs[1]).min() < 0.99  # the test can fail: one view does see the rotation
    meta = json.loads(pq.read_schema(tmp_path / "e8.parquet").metadata[b"gzfast"])
    assert meta["command"] == "embed" and meta["tta"] == 8


def test_features_are_timm_s_pooled_pre_logits_and_packed_images_give_the_folder_s(kaggle_run, real_shards, gz2_dir,
                                                                                   tmp_path):
    """From shards (pil) and from the folder: the same features; and they are forward_head(pre_logits=True)
    of forward_features, computed here by hand for a batch."""
    shards, folder = tmp_path / "s.csv", tmp_path / "f.parquet"
    common = ["--run", str(kaggle_run), "--tta", "1", "--workers", "1", "--loader", "pil"]
    assert embed_mod.main([*common, "--shards", str(real_shards / "test"), "--out", str(shards)]) == 0
    assert embed_mod.main([*common, "--images", str(gz2_dir / "test_images"), "--out", str(folder)]) == 0
    a, b = pd.read_csv(shards).set_index("GalaxyID"), pd.read_parquet(folder).set_index("GalaxyID")
    assert len(a) == len(b) == 146 and sorted(a.index) == sorted(b.index)
    assert np.abs(a.loc[b.index].to_numpy() - b.to_numpy()).max() < 2e-5  # CSV keeps 6 decimals
    loaded = load_run(kaggle_run)
    x = torch.randn(2, 3, 32, 32)
    backbone = loaded.model.backbone
    by_hand = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    assert torch.equal(pooled_features(loaded.model, x), by_hand) and by_hand.shape == (2, 320)
