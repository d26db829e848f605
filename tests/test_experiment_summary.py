"""benchmarks/experiment_summary.py, the curriculum experiment's arithmetic and words, on run results built
by hand: no files, no processes, no training."""
import json
import statistics
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the repo, not an installed package
from benchmarks import experiment_summary as summ  # noqa: E402


def epochs(rmses: list[float], seconds: float = 10.0, samples: int = 100, stages: list[str] | None = None) -> list[dict]:
    """metrics.jsonl's epoch records of a run with these validation RMSEs."""
    stages = stages or ["all"] * len(rmses)
    return [{"kind": "epoch", "epoch": i + 1, "stage": stages[i], "train_loss": 0.05 / (i + 1), "val_rmse": v,
             "epoch_time": seconds, "samples": samples} for i, v in enumerate(rmses)]


def result(schedule: str, seed: int, rmses: list[float], seconds: float = 10.0, samples: int = 100) -> dict:
    return summ.run_result(schedule, seed, f"runs/{schedule}-seed{seed}", epochs(rmses, seconds, samples))


def times(schedule: str, seconds: list) -> dict:
    """A schedule's row as the verdict reads it: its time to the target per seed (None: not reached)."""
    return {"schedule": schedule, "time_to_target_s": summ.spread(seconds)}


# --- one run --------------------------------------------------------------------------------------

def test_run_result_adds_up_the_epochs_and_counts_a_repeated_epoch_once():
    rows = epochs([0.3, 0.2, 0.25], seconds=4.0, samples=50)
    again = {**rows[1], "val_rmse": 0.18, "epoch_time": 6.0}  # epoch 2 recorded again (a resumed run): the last counts
    r = summ.run_result("all:3", 1, "runs/all3-seed1", [rows[2], rows[0], rows[1], again])
    assert (r["schedule"], r["seed"], r["folder"], r["epochs"]) == ("all:3", 1, "runs/all3-seed1", 3)
    assert [c["epoch"] for c in r["curve"]] == [1, 2, 3] and [c["val_rmse"] for c in r["curve"]] == [0.3, 0.18, 0.25]
    assert [c["time_s"] for c in r["curve"]] == [4.0, 10.0, 14.0] and [c["images"] for c in r["curve"]] == [50, 100, 150]
    assert (r["final_val_rmse"], r["best_val_rmse"], r["wall_s"], r["images"]) == (0.25, 0.18, 14.0, 150)


def test_a_run_reaches_the_target_at_the_end_of_its_first_epoch_at_or_below_it():
    r = result("all:4", 0, [0.3, 0.1, 0.05, 0.2], seconds=7.0, samples=30)
    assert summ.reach(r, 0.1) == {"epoch_at_target": 2, "time_to_target_s": 14.0, "images_to_target": 60}
    assert summ.reach(r, 0.3) == {"epoch_at_target": 1, "time_to_target_s": 7.0, "images_to_target": 30}


def test_a_run_that_never_reaches_the_target_has_no_time_to_it():
    r = result("all:3", 0, [0.3, 0.2, 0.15])
    assert summ.reach(r, 0.1) == {"epoch_at_target": None, "time_to_target_s": None, "images_to_target": None}
    missed = summ.spread([None, None])
    assert (missed["mean"], missed["sd"], missed["n"], missed["of"]) == (None, None, 0, 2)
    assert summ.fmt_spread(missed, "s", 1) == "not reached (0/2)"


def test_spread_is_over_the_seeds_that_have_a_value():
    s = summ.spread([10.0, None, 14.0])
    assert s["mean"] == 12.0 and s["sd"] == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert (s["min"], s["max"], s["n"], s["of"], s["values"]) == (10.0, 14.0, 2, 3, [10.0, None, 14.0])
    assert summ.fmt_spread(s, "s", 1) == "12.0 ± 2.8 s (2/3 reached)"
    one = summ.spread([5.0])
    assert one["sd"] is None and summ.fmt_spread(one, "s", 1) == "5.0 s"


# --- the summary ----------------------------------------------------------------------------------

def test_the_reference_is_the_plain_schedule_and_sets_the_default_target():
    assert summ.reference_schedule(["high:1,all:2", "all:3"]) == "all:3"
    assert summ.reference_schedule(["high:1,all:2", "high:2,all:1"]) == "high:1,all:2"  # no plain one: the first
    results = [result("high:1,all:2", 0, [0.2, 0.1, 0.09], seconds=5), result("all:3", 0, [0.2, 0.15, 0.10]),
               result("all:3", 1, [0.2, 0.15, 0.12])]
    s = summ.summarize(["high:1,all:2", "all:3"], results)
    assert s["reference"] == "all:3" and s["target_rmse"] == pytest.approx(0.11 * summ.TARGET_FACTOR)
    assert s["target_rule"] == "mean final val RMSE of all:3 x 1.02"
    cur, plain = s["schedules"]
    assert (plain["kind"], plain["reference"], plain["epochs"], plain["seeds"]) == ("plain", True, 3, [0, 1])
    assert (cur["kind"], cur["reference"]) == ("curriculum", False)
    assert plain["time_to_target_s"]["values"] == [30.0, None] and cur["time_to_target_s"]["values"] == [10.0]
    given = summ.summarize(["high:1,all:2", "all:3"], results, target=0.2)
    assert (given["target_rmse"], given["target_rule"]) == (0.2, "--target")
    assert [r["epoch_at_target"] for r in given["runs"]] == [1, 1, 1]
    assert "epoch_at_target" not in results[0]  # the results given are not changed


def test_summary_holds_the_verdicts_fields_and_its_sentence():
    results = [result("all:2", seed, [0.2, 0.1], seconds=50 + seed) for seed in (0, 1)]
    results += [result("high:1,all:1", seed, [0.1, 0.1], seconds=20 + seed) for seed in (0, 1)]
    s = json.loads(json.dumps(summ.summarize(["all:2", "high:1,all:1"], results)))  # as summary.json holds it
    assert (s["fastest"], s["compared"], s["exceeds_seed_spread"], s["reference_reached"], s["not_reached"]) == (
        "high:1,all:1", "high:1,all:1", True, True, [])
    assert s["saving_vs_reference"] == pytest.approx(1 - 20.5 / 101) and s["difference_s"] == pytest.approx(80.5)
    assert s["verdict"] == summ.verdict_sentence(summ.Verdict(**{k: s[k] for k in summ.Verdict.__dataclass_fields__}))
    plain = summ.untimed(s)
    assert plain["reference"] == "all:2" and plain["not_reached"] == [] and plain["schedules"][0]["images"]["mean"] == 200
    assert not {"verdict", "fastest", "compared", "difference_s", "seed_spread_s", "fastest_time_s"} & plain.keys()
    assert "wall_s" not in plain["schedules"][0] and "time_s" not in plain["runs"][0]["curve"][0]


# --- the verdict ----------------------------------------------------------------------------------

def test_a_difference_within_the_seed_spread_is_not_called_real():
    found = summ.verdict([times("all:2", [100.0, 140.0]), times("high:1,all:1", [90.0, 130.0])], "all:2", 0.1)
    assert (found.fastest, found.compared, found.exceeds_seed_spread) == ("high:1,all:1", "high:1,all:1", False)
    assert found.difference_s == pytest.approx(10.0) and found.seed_spread_s == pytest.approx(2 * statistics.stdev([100, 140]))
    assert found.saving_vs_reference == pytest.approx(1 - 110 / 120)
    assert summ.verdict_sentence(found) == (
        "fastest to val RMSE <= 0.10000: high:1,all:1 (110 ± 28 s); high:1,all:1 takes 8% less time than all:2 "
        "(10 s against a spread of 57 s, the two sd added): a difference within the seed spread: not a difference these "
        "seeds can show")


def test_a_difference_beyond_the_seed_spread_is_called_real():
    found = summ.verdict([times("all:2", [50.0, 52.0]), times("high:1,all:1", [30.0, 31.0])], "all:2", 0.1)
    assert found.exceeds_seed_spread is True and found.saving_vs_reference == pytest.approx(1 - 30.5 / 51)
    assert summ.verdict_sentence(found).endswith(
        "takes 40% less time than all:2 (20.5 s against a spread of 2.1 s, the two sd added): a difference larger than the "
        "seed spread")


def test_when_the_reference_is_fastest_the_next_schedule_is_compared():
    found = summ.verdict([times("all:2", [50.0, 52.0]), times("high:1,all:1", [80.0, 81.0]), times("high:2", [90.0, 95.0])],
                         "all:2", 0.1)
    assert (found.fastest, found.compared) == ("all:2", "high:1,all:1") and found.saving_vs_reference < 0
    assert "high:1,all:1 takes 58% more time than all:2" in summ.verdict_sentence(found)


def test_one_seed_has_no_spread_to_judge_by():
    found = summ.verdict([times("all:2", [50.0]), times("high:1,all:1", [30.0])], "all:2", 0.1)
    assert found.exceeds_seed_spread is None and found.seed_spread_s == 0.0
    assert summ.verdict_sentence(found).endswith("(20.0 s against a spread of 0.0 s, the two sd added): one seed: no spread "
                                                 "to judge the difference by")


def test_schedules_that_miss_the_target_in_a_seed_are_named_and_not_ranked():
    found = summ.verdict([times("all:2", [50.0, None]), times("high:1,all:1", [30.0, 31.0]), times("high:2", [1.0, None])],
                         "all:2", 0.1)
    assert (found.fastest, found.compared, found.reference_reached, found.not_reached) == (
        "high:1,all:1", None, False, ["all:2", "high:2"])
    assert found.saving_vs_reference is None and found.exceeds_seed_spread is None
    assert summ.verdict_sentence(found) == (
        "fastest to val RMSE <= 0.10000: high:1,all:1 (30.5 ± 0.7 s); the reference all:2 did not reach it in every seed "
        "(all:2, high:2 did not reach it in every seed)")
    alone = summ.verdict([times("all:2", [50.0, 51.0]), times("high:1,all:1", [None, None])], "all:2", 0.1)
    assert (alone.fastest, alone.compared) == ("all:2", None)
    assert summ.verdict_sentence(alone) == ("fastest to val RMSE <= 0.10000: all:2 (50.5 ± 0.7 s) (high:1,all:1 did not "
                                            "reach it in every seed)")


def test_no_schedule_reaching_the_target_is_a_verdict_too():
    found = summ.verdict([times("all:2", [None, None]), times("high:1,all:1", [30.0, None])], "all:2", 0.125)
    assert found.fastest is None and found.not_reached == ["all:2", "high:1,all:1"]
    assert summ.verdict_sentence(found) == "no schedule reached val RMSE <= 0.12500 in every seed"


# --- the table ------------------------------------------------------------------------------------

def test_the_table_gives_each_schedule_a_row_of_mean_and_sd():
    results = [result("all:2", 0, [0.2, 0.10]), result("all:2", 1, [0.2, 0.12]),
               result("high:1,all:1", 0, [0.10, 0.11], seconds=5), result("high:1,all:1", 1, [0.3, 0.3], seconds=5)]
    lines = summ.table(summ.summarize(["all:2", "high:1,all:1"], results, target=0.11)).splitlines()
    assert lines == [
        "| schedule | seeds | final val RMSE | best val RMSE | wall time | images seen | time to target | images to target |",
        "|---|---|---|---|---|---|---|---|",
        "| `all:2` (plain) | 2 | 0.11000 ± 0.01414 | 0.11000 ± 0.01414 | 20.0 ± 0.0 s | 200 ± 0 | 20.0 s (1/2 reached) | "
        "200 (1/2 reached) |",
        "| `high:1,all:1` | 2 | 0.20500 ± 0.13435 | 0.20000 ± 0.14142 | 10.0 ± 0.0 s | 200 ± 0 | 5.0 s (1/2 reached) | "
        "100 (1/2 reached) |"]


def test_the_table_counts_in_minutes_once_a_run_lasts_ten():
    results = [result("all:2", 0, [0.2, 0.1], seconds=300), result("all:2", 1, [0.1, 0.1], seconds=330)]
    row = summ.table(summ.summarize(["all:2"], results)).splitlines()[2]
    # wall time 600 and 660 s; the target (0.102) reached after 600 s and 330 s
    assert "| 10.5 ± 0.7 min |" in row and "| 7.8 ± 3.2 min | 150 ± 71 |" in row


def test_the_report_says_what_the_figures_are_and_where_they_were_measured():
    s = summ.summarize(["all:2"], [result("all:2", 0, [0.2, 0.1])])
    s["provenance"] = {"cpu": "test cpu", "cpu_cores": 2, "gpu": None, "git_commit": "abcdef0123456789", "date": "today"}
    text = summ.report(s)
    assert text.startswith(summ.table(s) + "\n\nMean ± standard deviation over seeds. Target: val RMSE <= 0.10200 "
                                           "(mean final val RMSE of all:2 x 1.02).")
    assert f"\n\n{s['verdict']}.\n\n" in text and text.endswith("Machine: test cpu (2 cores), GPU: none; commit abcdef0123; today.\n")
