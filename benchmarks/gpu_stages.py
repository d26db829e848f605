"""The stages of `make gpu-check`, in order of value. Each is one small function of the check's context
(a dict) that returns its checks (what, target, measured, verdict) and its details; `gpu_check.py` runs
each in a process of its own, under its time limit, and writes its result the moment it ends.

Adding a stage is one function and one line in STAGES, with its estimate on one H200. The estimates below
and the data's add up to 350 s; with the start (imports, unpacking the DALI bundle: about 10 s) that is the
default 360 s, and a stage that does not fit what is left is recorded as skipped, never dropped.

    python benchmarks/gpu_stages.py STAGE CONTEXT.json RESULT.json     (what gpu_check.py runs)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_env  # noqa: E402
from shard_tools.layout import write_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The targets on one H100 (what a plain DALI + compiled ConvNeXt-small probe reached there).
TARGETS = {"loader": 20_000, "of_ceiling": 0.95, "epoch_s": 20.0, "stage_change_s": 0.5, "tests_s": 90}
CEILING_SEEN = 3_570  # img/s, ConvNeXt-small bf16 compiled, batch 512, stem + 2 stages frozen, one H100
# What each stage measures with: the study's recipe on a GPU; tiny sizes for the dry form on a CPU.
RECIPE = {False: {"model": "convnext_small", "image": 224, "crop": 212, "batch": 512, "precision": "bf16",
                  "compile": "on", "loader": "dali-gpu", "loader_windows": (5, 80, 3), "step_windows": (10, 10, 5)},
          True: {"model": "convnext_atto", "image": 32, "crop": 128, "batch": 8, "precision": "fp32",
                 "compile": "off", "loader": "dali-cpu", "loader_windows": (1, 3, 2), "step_windows": (1, 2, 2)}}
FAST_TESTS = ["tests/test_gpu.py", "-m", "gpu and not gpu_slow"]


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    estimate_s: float        # what it takes on one H200: decides whether it still fits the budget
    limit_s: float           # stopped there, whatever the budget
    needs_data: bool         # the full-size set is made before it, the first time
    run: Callable[[dict], dict]
    quick_estimate_s: float  # the same, in the dry form on a CPU


def check(what: str, target: str, measured: str, verdict: str) -> dict:
    return {"check": what, "target": target, "measured": measured, "verdict": verdict}


def judge(ctx: dict, ok: bool | None) -> str:
    """A GPU target is judged only on a GPU: the dry form measures it, and says so."""
    if not ctx["gpu"]:
        return "n/a (no GPU)"
    return "not measured" if ok is None else ("PASS" if ok else "FAIL")


def bench(ctx: dict, what: str, windows: tuple[int, int, int], *extra: str):
    """benchmarks/epoch_time.py's arguments for this check's recipe and shards."""
    from benchmarks import epoch_time
    r = RECIPE[ctx["quick"]]
    warmup, batches, repeats = windows
    flags = ["--shards", ctx["shards"], "--what", what, "--loaders", r["loader"], "--model", r["model"],
             "--image-size", str(r["image"]), "--crop-size", str(r["crop"]), "--batch-size", str(r["batch"]),
             "--precision", r["precision"], "--compile", r["compile"], "--freeze-stages", "2",
             "--warmup", str(warmup), "--batches", str(batches), "--repeats", str(repeats), *extra]
    if ctx["quick"]:
        flags += ["--workers", "1"]
    return epoch_time, epoch_time.parse_args(flags)


# --- 1. environment ---------------------------------------------------------------------------------

def jpeg_files(ctx: dict, n: int = 146) -> list[str]:
    """JPEGs for the decoder probe: the real ones when they travelled, else a few synthetic ones."""
    real = ctx.get("real_jpegs")
    if real and list(Path(real, "test_images").glob("*.jpg")):
        return sorted(str(p) for p in Path(real, "test_images").glob("*.jpg"))[:n]
    from shard_tools.synth import synthesize
    out = Path(ctx["work"]) / "probe-jpegs"
    synthesize(out, n_train=n, n_test=0, seed=5, progress=False)
    return sorted(str(p) for p in (out / "images_training_rev1").glob("*.jpg"))


def decode_rate(files: list[str], load: float, crop: int | None, batches: int = 20):
    """(first batch as numpy, images/s) of nvJPEG `mixed` decoding at `hw_decoder_load` = `load`, with the
    loader's chroma upsampling; a batch is every file once."""
    from nvidia.dali import fn, pipeline_def, types

    from gzfast.build import usable_cores

    @pipeline_def(batch_size=len(files), num_threads=max(1, usable_cores() - 1), device_id=0, prefetch_queue_depth=1)
    def pipe():
        jpg, _ = fn.readers.file(files=files, name="reader")
        like_the_loader = {"device": "mixed", "output_type": types.RGB, "jpeg_fancy_upsampling": True,
                           "hw_decoder_load": load}
        if crop:
            return fn.decoders.image_crop(jpg, crop=(crop, crop), **like_the_loader)
        return fn.decoders.image(jpg, **like_the_loader)

    p = pipe()
    p.build()
    first = p.run()[0].as_cpu().as_array()  # the GZ2 JPEGs are all 424 px: one shape
    t0 = time.perf_counter()
    for _ in range(batches):
        out = p.run()[0]
    out.as_cpu()  # waits for the last batch
    return first, batches * len(files) / (time.perf_counter() - t0)


def hw_decoder_probe(files: list[str], load: float) -> dict:
    """One batch decoded with the hardware decoder's share at `load` and at 0, whole and cropped as the
    loader crops: whether it runs, agrees, and is faster (DALI falls back silently where it cannot)."""
    out = {"load": load, "images": len(files)}
    for kind, crop in (("whole", None), ("crop", 212)):
        try:
            with_hw, rate_hw = decode_rate(files, load, crop)
            without, rate_0 = decode_rate(files, 0.0, crop)
        except Exception as exc:  # noqa: BLE001 - DALI's errors are RuntimeErrors of every kind: record, go on
            out[kind] = {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}
            continue
        diff = abs(with_hw.astype("float32") - without.astype("float32"))
        out[kind] = {"images_per_s_hw": rate_hw, "images_per_s_cuda": rate_0, "speedup": rate_hw / rate_0,
                     "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}
    whole = out.get("whole", {})
    out["usable"] = "error" not in whole and whole.get("mean_abs_diff", 99) <= 1.0
    return out


def hw_text(probe: dict) -> str:
    parts = []
    for kind in ("whole", "crop"):
        r = probe.get(kind, {})
        parts.append(f"{kind}: {r['error']}" if "error" in r else
                     f"{kind}: {r['images_per_s_hw']:,.0f} img/s at {probe['load']} vs {r['images_per_s_cuda']:,.0f} at 0 "
                     f"(x{r['speedup']:.2f}; mean diff {r['mean_abs_diff']:.2f}/255)")
    return "; ".join(parts)


def stage_environment(ctx: dict) -> dict:
    from gzfast.loaders.dali import HW_DECODER_LOAD
    facts = gpu_env.machine()
    found, missing = ctx["preflight"]["found"], ctx["preflight"]["missing"]
    versions = ", ".join(f"{k} {found[k]}" for k in ("torch", "nvidia.dali", "timm", "accelerate") if k in found)
    gpu = facts.get("gpu", "no CUDA GPU")
    checks = [check("environment", "a CUDA GPU; torch, DALI, webdataset, timm, accelerate",
                    f"{gpu} (driver {facts.get('driver')}, {facts.get('gpu_memory_gib')} GiB), {facts['usable_cores']} "
                    f"cores, Python {facts['python']}; {versions}; missing: "
                    f"{', '.join(missing) if missing else 'nothing'}",
                    "PASS" if facts["cuda_available"] else "n/a (no GPU)")]  # what it cannot do without stopped it already
    probe = None
    if facts["cuda_available"] and "nvidia.dali" in found:
        probe = hw_decoder_probe(jpeg_files(ctx), HW_DECODER_LOAD)
        checks.append(check("hardware JPEG decoder", "usable (agrees with the CUDA decoder)", hw_text(probe),
                            "yes" if probe["usable"] else "no"))
    else:
        checks.append(check("hardware JPEG decoder", "usable (agrees with the CUDA decoder)", "not probed (no GPU)",
                            "n/a (no GPU)"))
    import gzfast
    return {"checks": checks, "details": {"machine": facts, "found": found, "missing": missing, "hw_decoder": probe,
                                          "checkout": str(REPO), "gzfast_from": str(Path(gzfast.__file__).parent)}}


# --- 2-4. loader, step, epoch -------------------------------------------------------------------------

def stage_loader(ctx: dict) -> dict:
    """The loader alone, train-mode augmentation, fresh epochs (builds timed apart)."""
    epoch_time, args = bench(ctx, "loaders", RECIPE[ctx["quick"]]["loader_windows"])
    rows, _ = epoch_time.run(args)
    row = rows[0]
    rate = row["images_per_s"]
    measured = (f"{rate:,.0f} img/s (windows {row['spread'][0]:,.0f}-{row['spread'][1]:,.0f}; build to first batch "
                f"{row['first_batch_s']:.2f} s; {row['threads']} threads, hw_decoder_load {row['hw_decoder_load']})")
    return {"checks": [check(f"{row['loader']} loader alone", f">= {TARGETS['loader']:,} img/s", measured,
                             judge(ctx, rate >= TARGETS["loader"]))], "details": {"rows": rows}}


def dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters
        return {k: dict(v) for k, v in counters.items() if k in ("stats", "frames", "recompiles")}
    except Exception:  # noqa: BLE001 - private diagnostics: absent is fine
        return {}


def stage_step(ctx: dict) -> dict:
    """The synthetic-input ceiling and the loader-fed step in one process, on one compiled model,
    measured as interleaved windows."""
    epoch_time, args = bench(ctx, "synthetic,train", RECIPE[ctx["quick"]]["step_windows"])
    rows, _ = epoch_time.run(args)
    synthetic, fed = rows[0], next((r for r in rows[1:]), None)
    r = RECIPE[ctx["quick"]]
    recipe = f"{r['model']} {r['precision']} {'compiled' if r['compile'] == 'on' else 'eager'}, batch {r['batch']}"
    checks = [check("synthetic-input ceiling", f"about {CEILING_SEEN:,} img/s ({recipe}, stem + 2 frozen; one H100)",
                    f"{synthetic['images_per_s']:,.0f} img/s (warm-up incl. compilation {synthetic.get('warmup_s', 0):.0f} s)",
                    "info")]
    if fed is None:
        checks.append(check(f"{r['loader']}-fed step", f">= {TARGETS['of_ceiling']:.0%} of the ceiling",
                            "not measured (see the log)", judge(ctx, None)))
    else:
        pairs = fed["pair_ratios"]
        checks.append(check(f"{r['loader']}-fed step", f">= {TARGETS['of_ceiling']:.0%} of the ceiling",
                            f"{fed['of_ceiling']:.0%} ({fed['images_per_s']:,.0f} of {fed['ceiling_images_per_s']:,.0f} img/s; "
                            f"{len(pairs)} interleaved pairs of {fed['window_steps']} steps, {min(pairs):.0%}-{max(pairs):.0%})",
                            judge(ctx, fed["of_ceiling"] >= TARGETS["of_ceiling"])))
    return {"checks": checks, "details": {"rows": rows, "dynamo": dynamo_counters()}}


def stage_epoch(ctx: dict) -> dict:
    """Whole epochs through the trainer, curriculum high:1,high+medium:1,all:1, judged on the last."""
    epoch_time, args = bench(ctx, "epoch", RECIPE[ctx["quick"]]["step_windows"], "--show-trainer")
    names, _ = epoch_time.choices(args, ctx["gpu"])
    epoch_time.ensure_shards(args)
    cfg = epoch_time.resolve(args, ctx["gpu"])  # the step stage checked that this recipe fits in memory
    # the dry form leaves out the trainer's start-up probe (seconds on a CPU; not judged here)
    row = epoch_time.whole_epoch(args, cfg, names[0], echo=True, trainer_flags={"ceiling_probe": 0} if ctx["quick"] else None)
    earlier = ", ".join(f"{e['stage']} {e['first_batch_wait']:.2f} s" for e in row["epochs"][:-1])
    checks = [check("whole 61,578-image epoch incl. validation", f"<= {TARGETS['epoch_s']:.0f} s",
                    f"{row['epoch_s_61578']:.1f} s (measured {row['epoch_s']:.1f} s on {row['train_samples']:,} + "
                    f"{row['val_samples']:,} images, validation {row['eval_s']:.1f} s)",
                    judge(ctx, row["epoch_s_61578"] <= TARGETS["epoch_s"])),
              check("stage change: training time lost", f"<= {TARGETS['stage_change_s']} s",
                    f"{row['first_batch_wait_s']:.2f} s (first batch of the last stage, {row['epochs'][-1]['stage']}; "
                    f"earlier epochs: {earlier})", judge(ctx, row["first_batch_wait_s"] <= TARGETS["stage_change_s"]))]
    return {"checks": checks, "details": {"row": row}}


# --- 5. tests -----------------------------------------------------------------------------------------

def pytest_env(ctx: dict) -> dict:
    base = ctx.get("env") or os.environ  # a stage process already runs in the check's environment
    env = dict(base, PYTHONPATH=os.pathsep.join(p for p in [str(REPO), base.get("PYTHONPATH", "")] if p))
    if ctx.get("real_jpegs"):
        env["GZ2_SHARED"] = ctx["real_jpegs"]
    return gpu_env.pytest_path_env(env)


def run_pytest(ctx: dict, args: list[str]) -> tuple[int, list[str]]:
    """pytest with the check's environment, its console shown; (exit code, its last lines)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=pytest_env(ctx), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    tail = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        tail = (tail + [line.rstrip()])[-30:]
    return proc.wait(), tail


def stage_tests(ctx: dict) -> dict:
    """The fast GPU tests: dali-gpu's batch contract, its agreement with dali-cpu on the real JPEGs,
    exactly-once evaluation, a resumed optimizer step without host syncs (`make gpu-test` runs them all)."""
    t0 = time.perf_counter()
    code, tail = run_pytest(ctx, FAST_TESTS)
    seconds = time.perf_counter() - t0
    summary = next((x.strip("= ") for x in reversed(tail) if re.search(r"\b(passed|failed|skipped|error)", x)), "no summary")
    passed = re.search(r"(\d+) passed", summary) is not None
    if code != 0:
        verdict = "FAIL"
    else:  # on a CPU they all skip; on a GPU they must run, and in time
        verdict = judge(ctx, passed and seconds <= TARGETS["tests_s"])
    return {"checks": [check("fast GPU tests (tests/test_gpu.py -m 'gpu and not gpu_slow')",
                             f"all pass in <= {TARGETS['tests_s']} s", f"{summary} ({seconds:.0f} s)", verdict)],
            "details": {"exit_code": code, "tail": tail, "seconds": seconds}}


# --- 6. inference -------------------------------------------------------------------------------------

def random_weights(ctx: dict, data):
    """The recipe's model with random weights, as a loaded run: throughput does not depend on the weights."""
    from gzfast.config import TrainConfig
    from gzfast.data_facts import DataFacts
    from gzfast.inference import LoadedRun, for_inference
    from gzfast.model import GZ2Model

    r = RECIPE[ctx["quick"]]
    cfg = TrainConfig(model=r["model"], image_size=r["image"], crop_size=r["crop"], batch_size=r["batch"],
                      shards=ctx["shards"]).resolve(cuda=ctx["gpu"], source_side=data.image_side)
    model = for_inference(GZ2Model(cfg.model, cfg.head, data.tree), None)
    return LoadedRun(Path(ctx["work"]), Path("random-weights"), cfg, model, None, DataFacts.of(data), None, "random")


def stage_inference(ctx: dict) -> dict:
    """predict (one view and 8-view TTA) and embed over the val shards, eager bf16 on the GPU so that no
    compilation eats the budget (compiled: `make gpu-test`'s test_gpu_inference_speed)."""
    from gzfast.inference import Predictor
    from gzfast.loaders import make_loader
    from shard_tools.layout import PackedSet

    r = RECIPE[ctx["quick"]]
    data = PackedSet.open(ctx["shards"])
    loaded = random_weights(ctx, data)
    paths = data.paths("val")
    rows = []
    for what, views, shards in (("predict", 1, paths), ("predict", 8, paths[:1]), ("embed", 1, paths)):
        predictor = Predictor(loaded, views, compile="off", what="features" if what == "embed" else "outputs")
        loader = make_loader(r["loader"], shards, train=False, batch_size=r["batch"], image_size=r["image"],
                             crop_size=r["crop"], dtype=predictor.image_dtype, pad_last_batch=True,
                             source_side=data.image_side, label_count=data.tree.n, has_counts=data.has_counts)
        if not rows:
            predictor.run(loader, desc=None)  # warm-up: the pipeline's start, cuDNN's choice of kernels
        result = predictor.run(loader, desc=None)
        rows.append({"what": what, "views": views, "galaxies": len(result.ids), "seconds": result.seconds,
                     "galaxies_per_s": len(result.ids) / result.seconds, "steady_per_s": result.steady_per_s})
        print(f"{what} {views} view(s): {rows[-1]['galaxies_per_s']:,.0f} galaxies/s", flush=True)
    precision = "bf16 eager" if ctx["gpu"] else "fp32 eager"
    checks = [check(f"{row['what']}, {row['views']} view(s) ({r['model']} {precision}, {r['loader']})",
                    "info (compiled, with targets: make gpu-test)",
                    f"{row['galaxies_per_s']:,.0f} galaxies/s ({row['galaxies']:,} galaxies in {row['seconds']:.1f} s)",
                    "info" if ctx["gpu"] else "n/a (no GPU)") for row in rows]
    return {"checks": checks, "details": {"rows": rows}}


STAGES = [
    Stage("environment", "environment and the hardware JPEG decoder", 20, 60, False, stage_environment, 8),
    Stage("loader", "dali-gpu loader alone", 25, 30, True, stage_loader, 10),
    Stage("step", "ceiling and DALI-fed compiled step, interleaved", 110, 170, True, stage_step, 15),
    Stage("epoch", "whole trainer epochs with a stage change", 95, 150, True, stage_epoch, 30),
    Stage("tests", "fast GPU tests", 45, 90, False, stage_tests, 10),
    Stage("inference", "predict and embed throughput", 20, 45, True, stage_inference, 10),
]
DATA_ESTIMATE_S = {False: 35, True: 4}  # synthesizing and packing the set, the first time a stage needs it


def main(argv: list[str]) -> int:
    """Runs one stage in this process and writes its result (failed ones too, with what went wrong)."""
    name, ctx_path, result_path = argv
    ctx = json.loads(Path(ctx_path).read_text())
    stage = next(s for s in STAGES if s.name == name)
    t0 = time.perf_counter()
    try:
        result = {**stage.run(ctx), "status": "done"}
    except Exception as exc:  # noqa: BLE001 - a stage's failure is its result; the check goes on to the next
        text = str(exc).strip().splitlines()
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {text[0] if text else ''}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    result["seconds"] = time.perf_counter() - t0
    write_atomic(result_path, json.dumps(result, indent=1, default=str) + "\n")
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
