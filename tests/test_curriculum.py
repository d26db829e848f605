import pytest

from gzfast.curriculum import (
    DEFAULT_SCHEDULE,
    ScheduleError,
    Stage,
    default_schedule,
    parse_schedule,
    shards_for_epoch,
    stage_at,
    total_epochs,
)
from shard_tools.layout import PackedSet


def test_parse_default_and_plain_schedules():
    stages = parse_schedule(DEFAULT_SCHEDULE, epochs=20)
    assert stages == [Stage(("high",), 4), Stage(("high", "medium"), 4), Stage(("high", "medium", "low"), 12)]
    assert [s.name for s in stages] == ["high", "high+medium", "all"]
    assert parse_schedule("all:20") == [Stage(("high", "medium", "low"), 20)]
    assert parse_schedule(" high : 5 , medium+high:15 ")[1].tiers == ("high", "medium")
    # 16 full-epoch equivalents instead of 20 at the study's tier thirds
    assert sum(s.epochs * len(s.tiers) / 3 for s in stages) == pytest.approx(16, abs=0.01)


def test_default_schedule_keeps_its_proportions():
    assert default_schedule(20) == DEFAULT_SCHEDULE
    assert default_schedule(10) == "high:2,high+medium:2,all:6"
    assert total_epochs(parse_schedule(default_schedule(7))) == 7
    with pytest.raises(ScheduleError):
        default_schedule(2)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("high:4,hgh:16", "unknown tier 'hgh'"),
    ("high:0,all:20", "empty"),
    ("high:4,:16", "not TIERS:EPOCHS"),
    ("high", "not TIERS:EPOCHS"),
    ("high:four", "not an integer"),
])
def test_bad_schedules_are_named(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


def test_epochs_must_add_up():
    with pytest.raises(ScheduleError, match="lasts 20 epochs but the run has 10"):
        parse_schedule(DEFAULT_SCHEDULE, epochs=10)


def test_stage_at_walks_the_schedule():
    s = parse_schedule("high:2,all:3")
    assert [stage_at(s, e)[0] for e in range(5)] == [0, 0, 1, 1, 1]
    with pytest.raises(ScheduleError):
        stage_at(s, 5)


def test_shards_for_epoch_selects_the_stage_tiers(synth_shards):
    m = PackedSet.open(synth_shards)
    sched = parse_schedule("high:1,high+medium:1,all:1")
    e0, e1, e2 = (shards_for_epoch(m, sched, e) for e in range(3))
    assert e0 and all("/train/high/" in p for p in e0)
    assert set(e0) < set(e1) and {p.split("/")[-2] for p in e1} == {"high", "medium"}
    assert set(e2) == set(m.paths("train"))
    assert not set(e2) & set(m.paths("val"))
    assert shards_for_epoch(m, "high:1,all:2", 0) == e0  # pure: same inputs, same list
