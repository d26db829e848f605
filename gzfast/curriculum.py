"""Curriculum schedules: a pure function of (manifest, schedule, epoch) -> shard list (docs/design.md §6).

A schedule is a string of stages `TIERS:EPOCHS` joined by commas, e.g. `high:4,high+medium:4,all:12`;
plain training is `all:N`. TIERS is `all` or tier names joined by `+`.
"""
from __future__ import annotations

from dataclasses import dataclass

from shard_tools.errors import UserError
from shard_tools.layout import PackedSet
from shard_tools.schema import TIERS

DEFAULT_SCHEDULE = "high:4,high+medium:4,all:12"   # 16 full-epoch equivalents instead of 20
_DEFAULT_FRACTIONS = (0.2, 0.2, 0.6)


class ScheduleError(UserError, ValueError):
    """A schedule that cannot be trained; the message names the stage."""


@dataclass(frozen=True)
class Stage:
    tiers: tuple[str, ...]
    epochs: int

    @property
    def name(self) -> str:
        return "all" if set(self.tiers) == set(TIERS) else "+".join(self.tiers)


def parse_schedule(text: str, epochs: int | None = None) -> list[Stage]:
    """Parses `text`; with `epochs`, also requires the stages to add up to it."""
    if not text or not text.strip():
        raise ScheduleError("empty curriculum schedule")
    stages = []
    for part in text.split(","):
        part = part.strip()
        tiers_text, sep, n_text = part.rpartition(":")
        if not sep or not tiers_text.strip():
            raise ScheduleError(f"stage {part!r} is not TIERS:EPOCHS (e.g. high+medium:4)")
        try:
            n = int(n_text)
        except ValueError:
            raise ScheduleError(f"stage {part!r}: epochs {n_text!r} is not an integer") from None
        if n < 1:
            raise ScheduleError(f"stage {part!r} is empty: it must last at least one epoch")
        names = [t.strip() for t in tiers_text.split("+")]
        tiers = []
        for t in names:
            if t == "all":
                tiers += list(TIERS)
            elif t in TIERS:
                tiers.append(t)
            else:
                raise ScheduleError(f"stage {part!r}: unknown tier {t!r} (known: {', '.join(TIERS)}, all)")
        stages.append(Stage(tuple(t for t in TIERS if t in tiers), n))
    total = sum(s.epochs for s in stages)
    if epochs is not None and total != epochs:
        raise ScheduleError(f"schedule {text!r} lasts {total} epochs but the run has {epochs}")
    return stages


def default_schedule(epochs: int = 20) -> str:
    """The default curriculum for `epochs`, keeping its 20/20/60 % proportions."""
    if epochs < 3:
        raise ScheduleError(f"the default curriculum needs at least 3 epochs, got {epochs}")
    first = max(1, round(epochs * _DEFAULT_FRACTIONS[0]))
    second = max(1, round(epochs * _DEFAULT_FRACTIONS[1]))
    return f"high:{first},high+medium:{second},all:{epochs - first - second}"


def total_epochs(schedule: list[Stage]) -> int:
    return sum(s.epochs for s in schedule)


def stage_at(schedule: list[Stage], epoch: int) -> tuple[int, Stage]:
    """(index, stage) that epoch `epoch` (0-based) belongs to."""
    if epoch < 0:
        raise ScheduleError(f"epoch {epoch} < 0")
    end = 0
    for i, stage in enumerate(schedule):
        end += stage.epochs
        if epoch < end:
            return i, stage
    raise ScheduleError(f"epoch {epoch} is past the schedule's {end} epochs")


def shards_for_epoch(packed: PackedSet, schedule: list[Stage] | str, epoch: int) -> list[str]:
    """Training shard paths of epoch `epoch`: the train shards of its stage's tiers, in manifest order.

    The loader interleaves tiers and shuffles; this function only decides *which* shards."""
    if isinstance(schedule, str):
        schedule = parse_schedule(schedule)
    _, stage = stage_at(schedule, epoch)
    paths = packed.paths("train", stage.tiers)
    if not paths:
        raise ScheduleError(f"stage {stage.name} of epoch {epoch + 1} selects no shards: tiers "
                            f"{', '.join(stage.tiers)} of {packed.root} are empty")
    return paths


def check_schedule(packed: PackedSet, schedule: list[Stage]):
    """Every stage selects shards (checked before epoch 1, not an hour into the run)."""
    start = 0
    for stage in schedule:
        shards_for_epoch(packed, schedule, start)
        start += stage.epochs
