"""The curriculum experiment's results, from its runs' epoch records: where each run reaches a target
validation RMSE, mean ± standard deviation over the seeds per schedule, the verdict (which schedule reaches
the target fastest, and whether its difference from the plain reference is larger than the seed spread),
and the words: the table and the report's sentences.

Plain data in, plain data out: no files, no processes. benchmarks/curriculum.py reads the runs' metrics.jsonl
and writes what these functions return (summary.json, summary.md).

Wall time is the sum of the epoch records' `epoch_time` (training + validation of every epoch), images seen
the sum of their `samples`. A run reaches the target at the end of the first epoch whose validation RMSE is
<= the target; by default the target is the plain schedule's mean final RMSE x TARGET_FACTOR ("the same loss
in less time").
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace

from gzfast.curriculum import parse_schedule, total_epochs

TARGET_FACTOR = 1.02
# The per-run fields each schedule's row gives as a spread over its seeds.
SPREAD_KEYS = ("final_val_rmse", "best_val_rmse", "wall_s", "images", "time_to_target_s", "images_to_target",
               "epoch_at_target")
# Fields of summary.json that measure time (or follow from times); the rest is reproducible from the seeds.
TIMING_KEYS = {"wall_s", "time_to_target_s", "time_s", "verdict", "fastest", "fastest_time_s", "compared",
               "saving_vs_reference", "difference_s", "seed_spread_s", "exceeds_seed_spread", "provenance"}


# --- the schedules --------------------------------------------------------------------------------

def is_plain(schedule: str) -> bool:
    stages = parse_schedule(schedule)
    return len(stages) == 1 and stages[0].name == "all"


def reference_schedule(schedules: list[str]) -> str:
    """The plain schedule (one `all` stage) the curricula are measured against; else the first one."""
    return next((s for s in schedules if is_plain(s)), schedules[0])


# --- one run --------------------------------------------------------------------------------------

def run_result(schedule: str, seed: int, folder: str, epochs: list[dict]) -> dict:
    """One run from its epoch records (metrics.jsonl's `kind: epoch` rows; a repeated epoch counts once, the
    last record kept): final and best val RMSE, wall time, images seen, and the curve with running totals."""
    curve, time_s, images = [], 0.0, 0
    for r in sorted({r["epoch"]: r for r in epochs}.values(), key=lambda r: r["epoch"]):
        time_s += r["epoch_time"]
        images += r["samples"]
        curve.append({"epoch": r["epoch"], "stage": r["stage"], "train_loss": r["train_loss"], "val_rmse": r["val_rmse"],
                      "time_s": time_s, "images": images})
    return {"schedule": schedule, "seed": seed, "folder": folder, "epochs": len(curve),
            "final_val_rmse": curve[-1]["val_rmse"], "best_val_rmse": min(c["val_rmse"] for c in curve),
            "wall_s": time_s, "images": images, "curve": curve}


def reach(result: dict, target: float) -> dict:
    """Where a run first reaches the target: the end of the first epoch with val RMSE <= target."""
    for c in result["curve"]:
        if c["val_rmse"] <= target:
            return {"epoch_at_target": c["epoch"], "time_to_target_s": c["time_s"], "images_to_target": c["images"]}
    return {"epoch_at_target": None, "time_to_target_s": None, "images_to_target": None}


def spread(values: list) -> dict:
    """Mean and sample standard deviation over the seeds that have a value (None: never reached)."""
    have = [v for v in values if v is not None]
    return {"mean": statistics.fmean(have) if have else None,
            "sd": statistics.stdev(have) if len(have) > 1 else None,
            "min": min(have) if have else None, "max": max(have) if have else None,
            "n": len(have), "of": len(values), "values": values}


# --- the summary ----------------------------------------------------------------------------------

def schedule_row(schedule: str, results: list[dict], reference: str) -> dict:
    """One schedule's row: what it is, its seeds, and the spread of every SPREAD_KEYS field over them."""
    return {"schedule": schedule, "kind": "plain" if is_plain(schedule) else "curriculum", "reference": schedule == reference,
            "epochs": total_epochs(parse_schedule(schedule)), "seeds": [r["seed"] for r in results],
            **{k: spread([r[k] for r in results]) for k in SPREAD_KEYS}}


def summarize(schedules: list[str], results: list[dict], target: float | None = None) -> dict:
    """The experiment's summary from its runs' results (run_result): the target (`target`, else the
    reference's mean final RMSE x TARGET_FACTOR), each run's reach of it, a row per schedule, the verdict's
    fields and its sentence."""
    reference = reference_schedule(schedules)
    rule = "--target"
    if target is None:
        target = statistics.fmean(r["final_val_rmse"] for r in results if r["schedule"] == reference) * TARGET_FACTOR
        rule = f"mean final val RMSE of {reference} x {TARGET_FACTOR}"
    results = [{**r, **reach(r, target)} for r in results]
    rows = [schedule_row(s, [r for r in results if r["schedule"] == s], reference) for s in schedules]
    found = verdict(rows, reference, target)
    summary = {"target_rmse": target, "target_rule": rule, "reference": reference, "schedules": rows, "runs": results}
    summary.update(asdict(found))
    summary["verdict"] = verdict_sentence(found)
    return summary


def untimed(obj):
    """summary.json without the fields that measure time: what an interrupted and an uninterrupted
    experiment share exactly."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


# --- the verdict ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What the experiment shows about the time to the target, as fields; verdict_sentence words them."""

    reference: str
    target_rmse: float
    fastest: str | None = None             # fastest to the target of the schedules that reach it in every seed
    fastest_time_s: dict | None = None     # its time to the target (a spread)
    compared: str | None = None            # set against the reference: the fastest, or the next when that is the reference
    saving_vs_reference: float | None = None  # 1 - compared's mean time / the reference's (< 0: it takes longer)
    difference_s: float | None = None      # |the two mean times|
    seed_spread_s: float | None = None     # the two standard deviations added
    exceeds_seed_spread: bool | None = None  # difference_s > seed_spread_s; None with one seed (no spread)
    reference_reached: bool = False        # the reference reaches the target in every seed
    not_reached: list[str] = field(default_factory=list)  # schedules that miss it in some seed


def verdict(rows: list[dict], reference: str, target: float) -> Verdict:
    """The fastest schedule to the target (of those whose every seed reaches it), and a schedule against the
    reference: is the difference of their mean times larger than the seed spread (the two sd added)?"""
    times = {r["schedule"]: r["time_to_target_s"] for r in rows}
    full = [s for s, t in times.items() if t["n"] == t["of"]]
    found = Verdict(reference, target, reference_reached=reference in full, not_reached=[s for s in times if s not in full])
    if not full:
        return found
    by_time = sorted(full, key=lambda s: times[s]["mean"])
    found = replace(found, fastest=by_time[0], fastest_time_s=times[by_time[0]])
    compared = next((s for s in by_time if s != reference), None)
    if compared is None or not found.reference_reached:
        return found
    base, other = times[reference], times[compared]
    difference, sd = abs(base["mean"] - other["mean"]), (base["sd"] or 0.0) + (other["sd"] or 0.0)
    exceeds = difference > sd if base["sd"] is not None and other["sd"] is not None else None
    return replace(found, compared=compared, saving_vs_reference=1 - other["mean"] / base["mean"], difference_s=difference,
                   seed_spread_s=sd, exceeds_seed_spread=exceeds)


# --- the words ------------------------------------------------------------------------------------

JUDGEMENT = {True: "a difference larger than the seed spread",
             False: "a difference within the seed spread: not a difference these seeds can show",
             None: "one seed: no spread to judge the difference by"}


def verdict_sentence(found: Verdict) -> str:
    """The verdict in words (one sentence, no final full stop)."""
    if found.fastest is None:
        return f"no schedule reached val RMSE <= {found.target_rmse:.5f} in every seed"
    digits = 0 if found.fastest_time_s["mean"] >= 100 else 1
    text = f"fastest to val RMSE <= {found.target_rmse:.5f}: {found.fastest} ({fmt_spread(found.fastest_time_s, 's', digits)})"
    if found.compared is not None:
        saving = found.saving_vs_reference
        text += (f"; {found.compared} takes {abs(saving):.0%} {'less' if saving > 0 else 'more'} time than {found.reference} "
                 f"({found.difference_s:.{digits}f} s against a spread of {found.seed_spread_s:.{digits}f} s, the two sd "
                 f"added): {JUDGEMENT[found.exceeds_seed_spread]}")
    elif not found.reference_reached:
        text += f"; the reference {found.reference} did not reach it in every seed"
    if found.not_reached:
        text += f" ({', '.join(found.not_reached)} did not reach it in every seed)"
    return text


def fmt_spread(s: dict, unit: str = "", digits: int = 5, scale: float = 1.0) -> str:
    """`mean ± sd unit`, with how many seeds reached it when not all did."""
    if s["mean"] is None:
        return f"not reached (0/{s['of']})"
    value = f"{s['mean'] / scale:,.{digits}f}"
    if s["sd"] is not None:
        value += f" ± {s['sd'] / scale:,.{digits}f}"
    value += f" {unit}".rstrip()
    return value + (f" ({s['n']}/{s['of']} reached)" if s["n"] < s["of"] else "")


def table(summary: dict) -> str:
    """The Markdown table, a row per schedule; times in minutes once a run lasts 10 minutes or more."""
    longest = max(r["wall_s"]["max"] for r in summary["schedules"])
    unit, scale, digits = ("min", 60.0, 1) if longest >= 600 else ("s", 1.0, 1)
    lines = ["| schedule | seeds | final val RMSE | best val RMSE | wall time | images seen | time to target | "
             "images to target |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["schedules"]:
        name = f"`{r['schedule']}`" + (" (plain)" if r["kind"] == "plain" else "")
        lines.append(f"| {name} | {len(r['seeds'])} | {fmt_spread(r['final_val_rmse'])} | {fmt_spread(r['best_val_rmse'])} | "
                     f"{fmt_spread(r['wall_s'], unit, digits, scale)} | {fmt_spread(r['images'], '', 0)} | "
                     f"{fmt_spread(r['time_to_target_s'], unit, digits, scale)} | {fmt_spread(r['images_to_target'], '', 0)} |")
    return "\n".join(lines)


def report(summary: dict) -> str:
    """summary.md's body: the table, what its figures mean, the verdict, and where they were measured."""
    p = summary["provenance"]
    return (f"{table(summary)}\n\nMean ± standard deviation over seeds. Target: val RMSE <= {summary['target_rmse']:.5f} "
            f"({summary['target_rule']}). Wall time: the sum of the epochs' training + validation time (process start "
            f"and model build left out).\n\n{summary['verdict']}.\n\nMachine: {p['cpu']} ({p['cpu_cores']} cores), GPU: "
            f"{p['gpu'] or 'none'}; commit {p['git_commit'][:10]}; {p['date']}.\n")
