"""Shared fixtures: tiny generated data sets, and the real GZ2 files in ../shared/gz2 when present."""
from __future__ import annotations

from pathlib import Path

import pytest

from shard_tools.pack import PackOptions, pack
from shard_tools.synth import synthesize

from helpers import assemble_real_layout, shared_gz2


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


@pytest.fixture(scope="session")
def real_data(gz2_dir, tmp_path_factory) -> Path:
    return assemble_real_layout(gz2_dir, tmp_path_factory.mktemp("real") / "kaggle")


@pytest.fixture(scope="session")
def real_shards(real_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_shards")
    # val_fraction 0: both labelled rows stay in train, so every split is exercised by real files.
    pack(real_data, out, PackOptions(shard_size=64, val_fraction=0.0), workers=2, progress=False)
    return out


