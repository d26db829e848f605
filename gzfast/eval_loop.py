"""The one loop over evaluation batches, shared by the trainer's validation and by prediction: the model
under autocast on every batch (fixed-shape batches: a compiled model never recompiles), the padded rows
dropped, and the predictions kept on the device until one copy at the end."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class Prediction:
    ids: np.ndarray              # int64 N
    preds: np.ndarray            # float32 N×A
    labels: np.ndarray | None    # float32 N×A (labelled shards) or None
    counts: np.ndarray | None    # float32 N×A vote counts (sets packed from counts) or None
    seconds: float               # the whole loop, first batch (pipeline start, compilation) included
    steady_per_s: float | None   # galaxies/s after the first batch (None with a single batch)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_batches(forward: Callable[[torch.Tensor], torch.Tensor], batches, autocast: Callable, device: torch.device,
                    outputs: int, desc: str | None = None, progress: Callable[[int], None] | None = None) -> Prediction:
    """`forward(images)` over every real row of `batches` (iterable of loaders.Batch). `autocast()` gives
    the context each forward runs in; `outputs` is the number of predicted values per galaxy (for an empty
    input); `desc` shows a progress bar of batches, or `progress(n)` is told the real rows of each batch
    (a caller's own bar of galaxies)."""
    preds, labels, counts, ids = [], [], [], []
    total = len(batches) if hasattr(batches, "__len__") else None
    t0 = time.perf_counter()
    t_first, n_first = None, 0
    bar = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, disable=None if desc else True)
    for batch in batches:
        n = len(batch)
        with autocast():
            out = forward(batch.images)
        preds.append(out[:n].float())
        if batch.labels is not None:
            labels.append(batch.labels[:n])
        if batch.counts is not None:
            counts.append(batch.counts[:n])
        ids.append(batch.ids[:n].clone())
        if t_first is None:
            _sync(device)
            t_first, n_first = time.perf_counter(), n
        bar.update(1)
        if progress is not None:
            progress(n)
    bar.close()
    _sync(device)
    seconds = time.perf_counter() - t0
    n_all = sum(len(i) for i in ids)
    steady = (n_all - n_first) / (time.perf_counter() - t_first) if t_first is not None and n_all > n_first else None
    empty = np.zeros((0, outputs), np.float32)  # a rank with nothing to evaluate still takes part

    def host(parts):
        return torch.cat(parts).cpu().numpy().astype(np.float32) if parts else (empty if not ids else None)
    return Prediction(ids=torch.cat(ids).numpy().astype(np.int64) if ids else np.zeros(0, np.int64),
                      preds=host(preds), labels=host(labels), counts=host(counts), seconds=seconds, steady_per_s=steady)
