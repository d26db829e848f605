"""Plain helpers shared by the tests (fixtures live in conftest.py)."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from shard_tools import schema
from shard_tools.layout import REJECTED, PackedSet

REPO = Path(__file__).resolve().parents[1]


def shared_gz2() -> Path | None:
    path = Path(os.environ.get("GZ2_SHARED", REPO.parent / "shared" / "gz2"))
    return path if (path / "training_solutions_subset.csv").exists() else None


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


def load_manifest(root) -> dict:
    return PackedSet.open(root).manifest


def read_rejected(out) -> pd.DataFrame:
    """OUT/rejected.csv as strings: galaxy_id, file, split, reason."""
    return pd.read_csv(Path(out) / REJECTED, dtype=str, keep_default_na=False)
