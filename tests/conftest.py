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




@pytest.fixture(scope="session")
def gz2_count_shards(tmp_path_factory) -> Path:
    """A packed `gz2`-tree catalogue of 240 synthetic galaxies: vote counts (5-60 volunteers), JPEG/PNG,
    RGB/grey, 256/424/512 px images."""
    from shard_tools.pack import CatalogSpec, pack_catalog
    from shard_tools.trees import load_tree
    data = tmp_path_factory.mktemp("gz2_catalog")
    synthesize(data, 240, seed=5, workers=2, progress=False, layout="gz2")
    out = tmp_path_factory.mktemp("gz2_shards")
    pack_catalog(CatalogSpec(data / "catalog.csv", data / "images", load_tree("gz2")), out,
                 PackOptions(shard_size=32, val_fraction=0.2), workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def ring_merger_shards(tmp_path_factory) -> Path:
    """A packed catalogue of the two-question YAML tree `docs/examples/ring-merger.yaml`, with string
    (IAU-like) ids and vote counts."""
    from shard_tools.pack import CatalogSpec, pack_catalog
    from shard_tools.trees import load_tree

    from helpers import REPO
    data = tmp_path_factory.mktemp("ring_catalog")
    synthesize(data, 200, seed=6, workers=2, progress=False, layout="ring-merger")
    out = tmp_path_factory.mktemp("ring_shards")
    pack_catalog(CatalogSpec(data / "catalog.csv", data / "images", load_tree(REPO / "docs/examples/ring-merger.yaml")),
                 out, PackOptions(shard_size=32, val_fraction=0.2), workers=2, progress=False)
    return out
