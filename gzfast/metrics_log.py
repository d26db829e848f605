"""`RUN/metrics.jsonl`, one JSON object a line with the time since the run started, and the same fields to
Accelerate's experiment trackers (tensorboard, mlflow, wandb) when `--log-with` asks for them. The file
stays the source of truth: a resumed run truncates it to what its checkpoint accounts for, then appends."""
from __future__ import annotations

import json
import time
from pathlib import Path

TRACKER_PROJECT = "gzfast"  # the project (mlflow experiment, wandb project) and tensorboard's folder in RUN


def tracker_values(record: dict) -> dict:
    """A metrics.jsonl record as tracker scalars: `kind/field` for every number, nested dicts (per
    question, per tier) flattened to `kind/field/key`; text fields (the stage name) are left out, the
    epoch record's `stage_index` says the same."""
    out = {}

    def add(key, value):
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{key}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value

    for k, v in record.items():
        if k != "kind":
            add(f"{record['kind']}/{k}", v)
    return out


def tracker_config(cfg_dict: dict) -> dict:
    """The config as hyperparameters: tensorboard's hparams take only numbers, text and booleans."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg_dict.items()}


class MetricsLog:
    """Appends records on the main process (the others log nothing). `elapsed` carries a resumed run's
    earlier time, so `time` keeps counting from the run's start."""

    def __init__(self, path: Path, is_main: bool, elapsed: float = 0.0):
        self.path, self.is_main = Path(path), is_main
        self.start = time.time() - elapsed
        self.accelerator = None  # set by start_trackers
        self.lines = self._count()

    def _count(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path) as f:
            return sum(1 for _ in f)

    def elapsed(self) -> float:
        return time.time() - self.start

    def truncate(self, keep: int):
        """Drops what was logged after the checkpoint being resumed: the resumed run logs it again."""
        if self.is_main and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)[:keep]
            self.path.write_text("".join(lines))
        self.lines = keep

    def start_trackers(self, accelerator, trackers: list[str], cfg_dict: dict, run_name: str):
        accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(cfg_dict),
                                  init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})
        self.accelerator = accelerator

    def end_trackers(self):
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None

    def append(self, record: dict, step: int):
        if not self.is_main:
            return
        record = {**record, "time": round(self.elapsed(), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1
        if self.accelerator is not None:
            self.accelerator.log(tracker_values(record), step=step)

    def epochs(self) -> list[dict]:
        return [r for r in map(json.loads, self.path.read_text().splitlines()) if r["kind"] == "epoch"]
