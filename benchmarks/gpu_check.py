"""`make gpu-check`: the GPU path, checked and measured in stages that fit a short borrowed window.

    python benchmarks/gpu_check.py [--budget-s 360] [--out DIR] [--shards DIR] [--stages a,b] [--quick]
    python benchmarks/gpu_check.py --pytest "-m gpu tests"        (make gpu-test: pytest on the same set-up)

First, in seconds: what the machine has. DALI and webdataset may arrive as the three-part bundle of
`tools/dali-bundle.sh` (carried as `.dali-bundle/p0..p2` or in `../dali-parts`): it is
unpacked and the check restarts on it; without them and without a bundle, it stops with one line.
Then the stages of benchmarks/gpu_stages.py, in order of value, each in a process of its own under its
own time limit, each written under --out the moment it ends (`<k>-<stage>.json`, and `verdict.md`, the
table of every stage so far, rewritten): a run stopped at any point keeps everything finished before.
A stage that would not fit in what is left of --budget-s is recorded as `skipped: budget`. The full-size
set (61,578 synthetic training JPEGs, like Kaggle's) is made when the first stage needs it, unless
--shards names one. One inductor cache serves every stage, so only the first compilation is cold.

`--quick` is the dry form on a CPU: tiny sizes, `dali-cpu` for `dali-gpu`, GPU targets not judged.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_env  # noqa: E402
from benchmarks.cli import OneLineParser  # noqa: E402
from benchmarks.gpu_stages import DATA_ESTIMATE_S, STAGES, Stage, run_pytest  # noqa: E402
from shard_tools.errors import UserError, run_command  # noqa: E402
from shard_tools.layout import LayoutError, write_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0_ENV = "GZFAST_GPU_CHECK_T0"  # the check's start, kept across the restart on the DALI bundle
FULL_SET = {"n_train": 61_578, "n_test": 1_000, "shard_size": 500}
QUICK_SET = {"n_train": 200, "n_test": 16, "shard_size": 20}
WALL_TARGET_S = 360
OWN_NAME = re.compile(r"^(\d+-[a-z-]+\.json|verdict\.md)$")


class CheckError(UserError):
    """The check cannot start here; the message says what is missing and how to bring it."""


def say(text: str):
    print(f"gpu-check: {text}", flush=True)


def streamed(cmd: list[str], prefix: str, env: dict, timeout: float) -> tuple[int | None, list[str]]:
    """Runs `cmd` in a session of its own, its console shown line by line with `prefix`; kills the whole
    session at `timeout`. Returns (exit code or None when killed, its last lines)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            print(f"[{prefix}] {line}", end="", flush=True)
            tail.append(line.rstrip())
            del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(timeout=5)
    return code, tail


# --- the set-up: what is here, DALI from the bundle, the data ---------------------------------------

def preflight(quick: bool) -> dict:
    """What can be imported; fails fast (one line) on what the check cannot do without."""
    found, missing = gpu_env.importable()
    say("found " + ", ".join(f"{k} {v}" for k, v in found.items()))
    if "torch" in missing:
        raise CheckError(f"torch cannot be imported ({missing['torch']}); it must come with the machine")
    lacking = ", ".join(f"{m} ({missing[m]})" for m in gpu_env.FROM_BUNDLE if m in missing)
    site = os.environ.get(gpu_env.SITE_ENV)
    if lacking and site:
        raise CheckError(f"{lacking}: not importable from the unpacked DALI bundle in {site}; remove that folder "
                         f"and carry the three parts again (a bundle made by tools/dali-bundle.sh for "
                         f"this Python)")
    if lacking:
        raise CheckError(f"{lacking} missing and no DALI bundle found (.dali-bundle/p0..p2 or ../dali-parts); "
                         f"{gpu_env.BUNDLE_HINT}")
    if missing:
        say("missing " + "; ".join(f"{k} ({v})" for k, v in missing.items()))
    import torch
    gpu = torch.cuda.is_available()
    if not gpu and not quick:
        raise CheckError("no CUDA GPU here; on a CPU run the dry form: --quick")
    return {"found": found, "missing": missing, "gpu": gpu}


def real_jpegs() -> str | None:
    for path in (os.environ.get("GZ2_SHARED"), REPO.parent / "shared" / "gz2", REPO / ".gz2"):
        if path and (Path(path) / "test_images").is_dir():
            return str(path)
    return None


def make_data(ctx: dict) -> dict:
    """The full-size set (or the dry form's tiny one) under data/, synthesized and packed on every core,
    in this process (no second start-up of torch); both steps do nothing when their output is already
    complete (a rerun on a warm machine)."""
    from shard_tools.pack import PackError, PackOptions, pack
    from shard_tools.synth import SynthError, synthesize
    sizes = QUICK_SET if ctx["quick"] else FULL_SET
    base = REPO / "data" / ("gpu-check-quick" if ctx["quick"] else "gpu-check")
    cores = os.cpu_count() or 1
    out = {"shards": str(base / "shards"), **sizes}
    try:
        t0 = time.monotonic()
        synthesize(base / "synthetic", sizes["n_train"], sizes["n_test"], seed=0, workers=cores, progress=False)
        out["synth_s"] = time.monotonic() - t0
        say(f"data: {sizes['n_train']:,} + {sizes['n_test']:,} synthetic JPEGs in {out['synth_s']:.0f} s ({cores} workers)")
        t0 = time.monotonic()
        pack(base / "synthetic", base / "shards", PackOptions(shard_size=sizes["shard_size"]), workers=cores, progress=False)
        out["pack_s"] = time.monotonic() - t0
        say(f"data: packed into {base / 'shards'} in {out['pack_s']:.0f} s")
    except (SynthError, PackError, LayoutError) as exc:
        raise CheckError(f"making the data in {base}: {exc}") from None
    return out


# --- the report -----------------------------------------------------------------------------------

class Report:
    """Each stage's `<k>-<name>.json` and the table of all of them, `verdict.md`, written as they end."""

    def __init__(self, out: Path, stages: list[Stage], head: str, started: float, budget_s: float, gpu: bool):
        self.out, self.stages, self.head, self.started, self.budget_s = out, stages, head, started, budget_s
        self.gpu = gpu
        self.results: dict[str, dict] = {}

    def path(self, stage: Stage) -> Path:
        return self.out / f"{STAGES.index(stage) + 1}-{stage.name}.json"

    def record(self, stage: Stage, result: dict):
        self.results[stage.name] = result
        write_atomic(self.path(stage), json.dumps({"stage": stage.name, "title": stage.title, **result},
                                                  indent=1, default=str) + "\n")
        self.write_table()
        for row in self.rows(stage):
            say(f"{stage.name}: {row[1]}: {row[3]} -> {row[4]}")

    def rows(self, stage: Stage) -> list[tuple]:
        k = f"{STAGES.index(stage) + 1} {stage.name}"
        result = self.results.get(stage.name)
        if result is None:
            return [(k, stage.title, "", "not run (yet)", "", "")]
        took = f"{result.get('seconds', 0):.0f} s"
        rows = []
        if result.get("data"):
            d = result["data"]
            rows.append((k, "data for the stages", "made when first needed",
                         f"{d['n_train']:,} + {d['n_test']:,} synthetic JPEGs: synth {d['synth_s']:.0f} s, pack "
                         f"{d['pack_s']:.0f} s" if "synth_s" in d else f"given: {d['shards']}", "info", ""))
        if result["status"] != "done":
            rows.append((k, stage.title, "", result.get("error", ""), result["status"], took))
        rows += [(k, c["check"], c["target"], c["measured"], c["verdict"], took) for c in result.get("checks", [])]
        return rows

    def wall_row(self, final: bool) -> tuple:
        wall = time.time() - self.started
        verdict = ("PASS" if wall <= WALL_TARGET_S else "FAIL") if final else "running"
        if final and not self.gpu:
            verdict = "n/a (no GPU)"
        return ("", "gpu-check wall time", f"<= {WALL_TARGET_S // 60} min", f"{wall:.0f} s (budget {self.budget_s:.0f} s)",
                verdict, "")

    def write_table(self, final: bool = False) -> str:
        lines = [self.head, "", "| stage | check | target | measured | verdict | time |", "|---|---|---|---|---|---|"]
        for stage in self.stages:
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in self.rows(stage)]
        lines.append("| " + " | ".join(self.wall_row(final)) + " |")
        table = "\n".join(lines) + "\n"
        write_atomic(self.out / "verdict.md", table)
        return table

    def failed(self) -> bool:
        return any(r["status"] in ("failed", "timeout") or any(c["verdict"] == "FAIL" for c in r.get("checks", []))
                   for r in self.results.values())


# --- running the stages -------------------------------------------------------------------------------

def run_stage(stage: Stage, ctx: dict, timeout: float, work: Path) -> dict:
    """One stage in a process of its own (benchmarks/gpu_stages.py), stopped at `timeout`."""
    ctx_path, result_path = work / f"{stage.name}.ctx.json", work / f"{stage.name}.result.json"
    ctx_path.write_text(json.dumps({k: v for k, v in ctx.items() if k != "env"}))
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_stages.py"), stage.name, str(ctx_path), str(result_path)]
    t0 = time.monotonic()
    code, tail = streamed(cmd, stage.name, ctx["env"], timeout)
    if result_path.exists():
        return json.loads(result_path.read_text())
    last = next((x for x in reversed(tail) if x.strip()), "no output")
    status = "timeout" if code is None else "failed"
    why = f"stopped at its limit of {timeout:.0f} s" if code is None else f"exit {code}: {last}"
    return {"status": status, "error": why, "seconds": time.monotonic() - t0, "tail": tail[-20:]}


def run_stages(report: Report, ctx: dict, deadline: float):
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx["work"] = tmp
        for k, stage in enumerate(report.stages):
            estimate = stage.quick_estimate_s if ctx["quick"] else stage.estimate_s
            data_needed = stage.needs_data and not ctx.get("shards")
            need = estimate + (DATA_ESTIMATE_S[ctx["quick"]] if data_needed else 0)
            left = deadline - time.time()
            if k and need > left:  # the environment always runs: it is what the rest is read against
                report.record(stage, {"status": "skipped: budget", "seconds": 0,
                                      "error": f"needs about {need:.0f} s, {max(left, 0):.0f} s of the budget left"})
                continue
            say(f"[{k + 1}/{len(report.stages)}] {stage.title} (about {need:.0f} s; {left:.0f} s of the budget left)")
            result = {}
            if data_needed and ctx.get("data_error"):
                report.record(stage, {"status": "skipped: no data", "error": ctx["data_error"], "seconds": 0})
                continue
            try:
                if data_needed:
                    result["data"] = make_data(ctx)
                    ctx["shards"] = result["data"]["shards"]
            except CheckError as exc:
                ctx["data_error"] = str(exc)
                report.record(stage, {"status": "failed", "error": str(exc), "seconds": 0})
                continue
            limit = stage.limit_s * (4 if ctx["quick"] else 1)  # the dry form on a shared 2-core CPU
            timeout = min(limit, max(1.0, deadline - time.time())) if k else limit
            report.record(stage, {**result, **run_stage(stage, ctx, timeout, Path(tmp))})


# --- command line -----------------------------------------------------------------------------------

def prepare_out(path: Path) -> Path:
    """A new or empty folder, or one holding only an earlier check's own files (replaced)."""
    if path.exists() and not path.is_dir():
        raise CheckError(f"--out {path} is a file, not a folder; pick another --out")
    others = [p.name for p in path.iterdir() if not OWN_NAME.match(p.name)] if path.is_dir() else []
    if others:
        raise CheckError(f"--out {path} holds files gpu-check did not write ({', '.join(sorted(others)[:3])}); "
                         f"pick a new or empty --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_env(ctx: dict) -> dict:
    """Every stage's environment: the checkout importable, output unbuffered, one inductor cache."""
    cache = REPO / "data" / "gpu-check-inductor"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(cache), TRITON_CACHE_DIR=str(cache / "triton"),
               TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1",
               PYTHONPATH=os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p))
    if ctx.get("real_jpegs"):
        env["GZ2_SHARED"] = ctx["real_jpegs"]
    return env


def parse_args(argv):
    ap = OneLineParser(prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=360.0, help="wall time for the whole check (default 360)")
    ap.add_argument("--out", default=None, help="folder for the results (default benchmarks/results/gpu_check-<date>)")
    ap.add_argument("--shards", default=os.environ.get("SHARDS") or None, help="packed set (default: synthesize one)")
    ap.add_argument("--stages", default=None, help=f"comma list of {', '.join(s.name for s in STAGES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="the dry form on a CPU")
    ap.add_argument("--pytest", default=None, metavar="ARGS", help="run pytest ARGS on this set-up instead (make gpu-test)")
    args = ap.parse_args(argv)
    names = args.stages.split(",") if args.stages else [s.name for s in STAGES]
    unknown = [n for n in names if n not in {s.name for s in STAGES}]
    if unknown or args.budget_s <= 0:
        ap.error(f"unknown stage {', '.join(unknown)}" if unknown else "--budget-s must be > 0")
    args.selected = [s for s in STAGES if s.name in names]
    return args


def check_here(args, started: float) -> int:
    pre = preflight(args.quick)
    ctx = {"quick": args.quick, "gpu": pre["gpu"], "shards": str(Path(args.shards).resolve()) if args.shards else None,
           "real_jpegs": real_jpegs(), "preflight": {k: pre[k] for k in ("found", "missing")}}
    ctx["env"] = check_env(ctx)
    if args.pytest is not None:
        code, _ = run_pytest(ctx, shlex.split(args.pytest))
        return code
    out = prepare_out(Path(args.out or REPO / "benchmarks" / "results" / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}"))
    head = (f"# gpu-check {time.strftime('%Y-%m-%d %H:%M:%S')} ({'dry form, CPU' if args.quick else 'GPU'}; budget "
            f"{args.budget_s:.0f} s; real JPEGs: {ctx['real_jpegs'] or 'none'})")
    report = Report(out, args.selected, head, started, args.budget_s, ctx["gpu"])
    report.write_table()
    run_stages(report, ctx, started + args.budget_s)
    print("\n" + report.write_table(final=True), flush=True)
    say(f"results in {out} ({time.time() - started:.0f} s)")
    return 1 if report.failed() else 0


def main(argv=None) -> int:
    started = float(os.environ.get(T0_ENV) or time.time())
    os.environ[T0_ENV] = str(started)  # the restart on the DALI bundle keeps the clock
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def command():
        if argv is None:  # as a script: may restart itself on the unpacked DALI bundle
            gpu_env.bring_dali([str(Path(__file__).resolve()), *sys.argv[1:]], say)
        return check_here(args, started)

    return run_command("gpu-check", command)


if __name__ == "__main__":
    sys.exit(main())
