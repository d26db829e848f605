"""Where a run stands: the one piece of the trainer that changes as it goes, and what a checkpoint holds.

`RunState.state_dict()` is what `save_checkpoint` writes and `RunState.from_checkpoint()` reads it back, so
saving and resuming mirror each other. The rest of a checkpoint (config, data fingerprint, weights,
optimizer, RNG, process count) is assembled beside it in `checkpoint_payload`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from . import checkpoint as ckpt


@dataclass
class EpochStats:
    """Running sums of the epoch in progress; mid-epoch checkpoints carry them, so a resumed epoch
    reports what an uninterrupted one would."""
    loss_sum: float = 0.0
    loss_count: int = 0
    window_sum: float = 0.0      # loss since the last log point
    window_count: int = 0
    window_start: int = 0        # step of the last log point
    data_wait: float = 0.0       # host time blocked on the loader
    first_batch_wait: float = 0.0  # of that, the wait for the epoch's first batch (what an epoch boundary costs)
    train_time: float = 0.0
    samples: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> EpochStats:
        return cls(**state)


@dataclass
class RunState:
    """The run's progress: `epoch` and `step` name the next batch to train (epoch 0-based; step 0 at an
    epoch boundary)."""
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_rmse: float = math.inf
    stats: EpochStats = field(default_factory=EpochStats)
    elapsed: float = 0.0         # seconds the run had taken when this state was saved
    metrics_lines: int = 0       # lines of metrics.jsonl this state accounts for (the rest is dropped on resume)

    def state_dict(self, per_rank_stats: list[dict] | None = None) -> dict:
        """The progress fields of a checkpoint. `per_rank_stats`: every rank's own EpochStats, so a resumed
        epoch of several processes reduces what an unbroken one does."""
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step, "best_rmse": self.best_rmse,
                "epoch_stats": self.stats.state_dict(),
                "epoch_stats_per_rank": per_rank_stats or [self.stats.state_dict()],
                "metrics_lines": self.metrics_lines, "elapsed": self.elapsed}

    @classmethod
    def from_checkpoint(cls, state: dict, rank: int = 0, world_size: int = 1) -> RunState:
        per_rank = state.get("epoch_stats_per_rank")
        mine = per_rank[rank] if per_rank and len(per_rank) == world_size else state["epoch_stats"]
        return cls(epoch=state["epoch"], step=state["step"], global_step=state["global_step"],
                   best_rmse=state["best_rmse"], stats=EpochStats.from_state(mine),
                   elapsed=state.get("elapsed", 0.0), metrics_lines=state["metrics_lines"])

    def next_epoch(self):
        """The epoch ended: the next one starts from step 0 with fresh sums."""
        self.epoch, self.step, self.stats = self.epoch + 1, 0, EpochStats()


def checkpoint_payload(cfg_dict: dict, data_fingerprint: str, data_facts: dict, model_state: dict,
                       optimizer_state: dict, world_size: int, run: dict) -> dict:
    """Everything a checkpoint holds: what the run computes from (config, the data's fingerprint and the
    facts a reader needs without the shards: the tree, the image side), its weights and optimizer, the
    RNG, the process count, and its progress (`RunState.state_dict()`)."""
    return {"config": cfg_dict, "data_fingerprint": data_fingerprint, "data": data_facts, "model": model_state,
            "optimizer": optimizer_state, "world_size": world_size, "rng": ckpt.rng_state(), **run}
