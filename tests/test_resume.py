"""Every reason a resume is refused lives in one place (`gzfast.resume.check_resume`); where the set lives
may change, what it holds may not."""
import pytest

from gzfast.config import ConfigError, TrainConfig
from gzfast.resume import check_resume


def saved(cfg: TrainConfig, fingerprint="abc", world=1) -> dict:
    return {"config": cfg.to_dict(), "data_fingerprint": fingerprint, "world_size": world}


def test_the_same_set_under_another_spelling_resumes():
    cfg = TrainConfig(shards="data/shards", out="runs/x").resolve(False)
    for spelling in ("data/shards/", "./data/shards", "/abs/elsewhere/shards"):
        check_resume(saved(cfg), TrainConfig(shards=spelling, out="runs/x").resolve(False), "abc", 1)


@pytest.mark.parametrize("change, fingerprint, world, message", [
    ({"lr_head": 0.5}, "abc", 1, "lr_head: 0.0005 -> 0.5"),
    ({}, "other", 1, "differ from the ones this run was trained on"),
    ({}, "abc", 2, "trained by 1 process(es), this launch has 2"),
])
def test_a_resume_that_would_compute_something_else_is_refused_unless_forced(change, fingerprint, world, message):
    cfg = TrainConfig(out="runs/x").resolve(False)
    wanted = TrainConfig(out="runs/x", **change).resolve(False)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_resume(saved(cfg), wanted, fingerprint, world)
    check_resume(saved(cfg), TrainConfig(out="runs/x", resume=True, force=True, **change).resolve(False), fingerprint, world)
