"""Reading a run's epoch records (`RUN/metrics.jsonl`, written by `gzfast.metrics_log`) for the plot and the
model card: every line checked, so a missing, empty, truncated or foreign file is one line naming it and the
line, never a KeyError."""
from __future__ import annotations

import json
from pathlib import Path

from shard_tools.errors import UserError

METRICS = "metrics.jsonl"
# What the plot and the model card read of an epoch record.
EPOCH_FIELDS = ("epoch", "stage", "train_loss", "val_rmse", "epoch_time")
TEXT = {"stage"}
NULLABLE = {"val_rmse"}  # an epoch without validation


class RunRecordsError(UserError, ValueError):
    """A run folder whose records cannot be read; the message names the file and the line."""


def parse_line(text: str, where: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunRecordsError(f"{where}: not a JSON record ({exc.msg}); the file is truncated or not a gzfast "
                              f"metrics log") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise RunRecordsError(f"{where}: not a gzfast metrics record (no \"kind\" field)")
    return record


def check_epoch(record: dict, where: str, fields: tuple[str, ...]) -> dict:
    missing = [f for f in fields if f not in record]
    if missing:
        raise RunRecordsError(f"{where}: an epoch record without {', '.join(missing)}; is it a gzfast metrics log?")
    numbers = [f for f in fields if f not in TEXT and not (record[f] is None and f in NULLABLE)
               and (isinstance(record[f], bool) or not isinstance(record[f], int | float))]
    if numbers:
        raise RunRecordsError(f"{where}: {', '.join(f'{f} is {record[f]!r}' for f in numbers)}, not a number")
    return record


def read_epochs(run: str | Path, fields: tuple[str, ...] = EPOCH_FIELDS) -> list[dict]:
    """The epoch records of a run, in order. RunRecordsError when the run or its log is missing, the log is
    empty, holds no epoch yet, or has a line that is not a whole record with `fields`."""
    run = Path(run)
    if not run.is_dir():
        what = "a file, not a run folder" if run.exists() else "no such run folder"
        raise RunRecordsError(f"{run}: {what}; pass the --out folder of a training run")
    path = run / METRICS
    if not path.is_file():
        raise RunRecordsError(f"{path}: no metrics log in {run} (is it a run folder, and has its first epoch started?)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunRecordsError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    if not any(line.strip() for line in lines):
        raise RunRecordsError(f"{path}: empty; the run has not logged anything yet")
    epochs = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            record = parse_line(line, f"{path} line {number}")
            if record["kind"] == "epoch":
                epochs.append(check_epoch(record, f"{path} line {number}", fields))
    if not epochs:
        raise RunRecordsError(f"{path}: no epoch has finished yet (only step records); plot it after the first epoch")
    return epochs
