"""Shared fixtures: tiny generated data sets, and the real GZ2 files in ../shared/gz2 when present."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shard_tools import schema
from shard_tools.pack import PackOptions, pack
from shard_tools.synth import synthesize

REPO = Path(__file__).resolve().parents[1]


def shared_gz2() -> Path | None:
    path = Path(os.environ.get("GZ2_SHARED", REPO.parent / "shared" / "gz2"))
    return path if (path / "training_solutions_subset.csv").exists() else None


@pytest.fixture(scope="session")
def gz2_dir() -> Path:
    path = shared_gz2()
    if path is None:
        pytest.skip("real GZ2 files not found (../shared/gz2 or $GZ2_SHARED); they exist for developers and CI only")
    return path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout set: 360 train + 40 test images."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_train=360, n_test=40, seed=1, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    pack(synth_data, out, PackOptions(shard_size=40, val_fraction=0.15), workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def mid_shards(tmp_path_factory) -> Path:
    """1,500 synthetic training galaxies in 100-sample shards: large against a small shuffle buffer."""
    data = tmp_path_factory.mktemp("mid_data")
    synthesize(data, n_train=1500, n_test=0, seed=11, workers=2, progress=False)
    out = tmp_path_factory.mktemp("mid_shards")
    pack(data, out, PackOptions(val_fraction=0.15, shard_size=100), workers=2, progress=False)
    return out


def assemble_real_layout(gz2: Path, dest: Path) -> Path:
    """The Kaggle layout from ../shared/gz2, which is not in it: the 146 test JPEGs as the test set, the
    2 real training JPEGs with real label rows of the subset attached to their ids."""
    (dest / "images_training_rev1").mkdir(parents=True)
    shutil.copytree(gz2 / "test_images", dest / "images_test_rev1")
    train_imgs = sorted((gz2 / "train_images").glob("*.jpg"))
    for p in train_imgs:
        shutil.copy(p, dest / "images_training_rev1" / p.name)
    labels = pd.read_csv(gz2 / "training_solutions_subset.csv", dtype=str, nrows=len(train_imgs))
    labels["GalaxyID"] = [p.stem for p in train_imgs]
    labels.to_csv(dest / "training_solutions_rev1.csv", index=False)
    return dest


@pytest.fixture(scope="session")
def real_data(gz2_dir, tmp_path_factory) -> Path:
    return assemble_real_layout(gz2_dir, tmp_path_factory.mktemp("real") / "kaggle")


@pytest.fixture(scope="session")
def real_shards(real_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_shards")
    # val_fraction 0: both labelled rows stay in train, so every split is exercised by real files.
    pack(real_data, out, PackOptions(shard_size=64, val_fraction=0.0), workers=2, progress=False)
    return out


def read_shard_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of one tar, in file order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def csv_labels(csv_path: Path) -> dict[int, np.ndarray]:
    """GalaxyID -> float32 labels, parsed the way a reader of the CSV would."""
    df = pd.read_csv(csv_path)
    return {int(g): row.astype(np.float32) for g, row in zip(df["GalaxyID"], df[schema.COLUMNS].to_numpy())}
