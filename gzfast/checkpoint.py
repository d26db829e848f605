"""Checkpoints: atomic writes (shard_tools.layout.atomic_path: temp file + fsync + rename) and RNG state."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from shard_tools.layout import atomic_path

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj, path: str | Path):
    """torch.save that never leaves a half-written file at `path`: a crash, even kill -9, mid-write leaves
    the previous file in place."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_copy(src: str | Path, dst: str | Path):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
