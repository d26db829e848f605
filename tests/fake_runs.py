"""Run folders as the trainer leaves them, with untrained weights: enough where the weights don't matter
(the checkpoint holds the config, the data facts and the fingerprint as the trainer writes them)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gzfast.config import TrainConfig
from gzfast.model import GZ2Model


def fake_run(folder: Path, head: str = "sigmoid", model: str = "convnext_atto", shards: str = "data/shards",
             tree=None, side: int = 424, fit: str | None = None, has_counts: bool = False,
             fingerprint: str | None = None, seed: int = 0, **settings) -> Path:
    """`tree` None: a checkpoint without data facts (a gz2-kaggle run at 424 px, as older ones are)."""
    settings = {"image_size": 32, "crop_size": 128, "batch_size": 16, **settings}
    loss = "dirichlet" if head == "dirichlet" else "mse"
    cfg = TrainConfig(model=model, head=head, loss=loss, epochs=1, shards=shards, out=str(folder),
                      **settings).resolve(cuda=False, source_side=side)
    data = None if tree is None else {"tree": tree.to_dict(), "image_side": side, "has_counts": has_counts, "fit": fit}
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), **({"data": data} if data else {})}))
    torch.manual_seed(seed)
    state = {"config": cfg.to_dict(), "model": GZ2Model(model, head, tree).state_dict(), "epoch": 1}
    if data is not None:
        state["data"] = data
    if fingerprint is not None:
        state["data_fingerprint"] = fingerprint
    torch.save(state, folder / "checkpoints" / "best.pt")
    return folder
