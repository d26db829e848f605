"""Checkpoints: atomic writes (temp file + fsync + rename), RNG state capture, resume checks."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj, path: str | Path):
    """torch.save that never leaves a half-written file at `path`: a crash, even kill -9, mid-write leaves
    the previous file in place (the temp file is ignored and overwritten next time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_copy(src: str | Path, dst: str | Path):
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def manifest_fingerprint(manifest: dict) -> str:
    """What the trainer read: the input fingerprint and every shard's sha256."""
    h = hashlib.sha256(manifest.get("input_fingerprint", "").encode())
    for s in manifest["shards"]:
        h.update(f"{s['path']}:{s['sha256']}\n".encode())
    return h.hexdigest()
