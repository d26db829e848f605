"""`make gpu-check`: the GPU path, checked and measured in one command on a fresh GPU machine.

    python benchmarks/gpu_check.py [--shards DIR] [--quick] [--skip-tests] [--out benchmarks/results]

1. the environment: what is there and what is missing (DALI may arrive as the three-part bundle of
   ../shared/tools/dali-bundle.sh in ../dali-parts: it is unpacked and the check restarts on it);
2. a full-size synthetic set (61,578 training JPEGs, like Kaggle's) unless --shards (or SHARDS=) names one;
3. `pytest -m gpu` (real JPEGs from GZ2_SHARED, ../shared/gz2 or the git-ignored .gz2/ that
   `make gpu-data` fills);
4. benchmarks/epoch_time.py at full size: loaders, the synthetic-input ceiling, DALI-fed compiled
   training and a whole epoch through the trainer (its second epoch is a curriculum stage change);
5. one verdict table against the targets, saved with the results under benchmarks/results/.

`--quick` is the dry form for a CPU: a tiny set, CPU-sized benchmark windows, and the GPU targets
reported as not measured.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = REPO.parent / "dali-parts"
SITE = REPO.parent / "dali-site"
FULL_TRAIN, FULL_TEST = 61_578, 1_000
# The targets on one H100 (what a plain DALI + compiled ConvNeXt-small probe reached there).
TARGETS = {"loader": 20_000, "of_ceiling": 0.95, "epoch_s": 20.0, "stage_change_s": 0.5}


def say(text: str):
    print(f"gpu-check: {text}", flush=True)


# --- 1. environment ---------------------------------------------------------------------------------

def unpack_dali_bundle() -> bool:
    """Unpacks ../dali-parts/p0..p2 into ../dali-site and restarts this process on it (once)."""
    parts = sorted(PARTS.glob("p?"))
    if len(parts) != 3 or os.environ.get("GZFAST_DALI_SITE"):
        return False
    if not (SITE / "nvidia" / "dali").is_dir():
        say(f"unpacking the DALI bundle from {PARTS} into {SITE}")
        import lzma
        with lzma.open(_Concat(parts)) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            tar.extractall(SITE, filter="data")
    nv = SITE / "nvidia"
    libs = [nv / "cu13/lib", nv / "nvimgcodec", nv / "libnvcomp/lib64", nv / "nvjpeg2k/lib", nv / "nvtiff/lib"]
    env = dict(os.environ, GZFAST_DALI_SITE=str(SITE),
               PYTHONPATH=os.pathsep.join([str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")]),
               LD_LIBRARY_PATH=os.pathsep.join([*map(str, libs), os.environ.get("LD_LIBRARY_PATH", "")]))
    os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    return True  # not reached


class _Concat:
    """The bundle's parts read as one stream."""

    def __init__(self, parts):
        self.files = [open(p, "rb") for p in parts]

    def read(self, n=-1):
        out = b""
        while self.files and (n < 0 or len(out) < n):
            chunk = self.files[0].read(-1 if n < 0 else n - len(out))
            if not chunk:
                self.files.pop(0).close()
                continue
            out += chunk
        return out


def environment() -> tuple[dict, list[str]]:
    site = REPO / ".gpu-site"  # pytest for a machine without a package index (`make gpu-data`)
    if site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(site)])
    found, missing = {}, []
    for mod in ("torch", "nvidia.dali", "webdataset", "timm", "accelerate", "pandas", "PIL", "numpy", "pytest"):
        try:
            found[mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
            missing.append(f"{mod} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if "torch" in found:
        import torch
        found["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return found, missing


# --- 2. data ----------------------------------------------------------------------------------------

def shell(cmd: list[str], **kw) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, cwd=REPO, env=env, **kw).returncode


def make_shards(quick: bool) -> str:
    n_train, n_test = (400, 40) if quick else (FULL_TRAIN, FULL_TEST)
    base = REPO / "data" / ("gpu-check-quick" if quick else "gpu-check")
    for cmd in (["synth", "--out", str(base / "synthetic"), "--n-train", str(n_train), "--n-test", str(n_test)],
                ["pack", "--data", str(base / "synthetic"), "--out", str(base / "shards")]):
        if shell([sys.executable, "-m", "shard_tools", *cmd]):
            raise SystemExit(f"gpu-check: error: `python -m shard_tools {' '.join(cmd)}` failed (see above)")
    return str(base / "shards")


def real_jpegs() -> str | None:
    for path in (os.environ.get("GZ2_SHARED"), REPO.parent / "shared" / "gz2", REPO / ".gz2"):
        if path and (Path(path) / "test_images").is_dir():
            return str(path)
    return None


# --- 5. verdict -------------------------------------------------------------------------------------

def verdict(result: dict, gpu: bool, tests: str) -> list[tuple[str, str, str, str]]:
    rows = result["results"]

    def find(what, loader):
        return next((r for r in rows if r["what"].startswith(what) and r["loader"] == loader), None)

    def judge(value, ok):
        if not gpu:
            return "n/a (no GPU)"
        return "not measured" if value is None else ("PASS" if ok else "FAIL")

    loader = find("loader only", "dali-gpu")
    fed = find("train step", "dali-gpu") or find("train step", "dali-cpu")
    ceiling = find("train step", "synthetic tensors")
    epoch = next((r for r in rows if r["what"].startswith("whole epoch")), None)
    lines = [("pytest -m gpu", "all pass", tests, "PASS" if tests.startswith("passed") else tests)]
    v = loader and loader["images_per_s"]
    lines.append(("dali-gpu loader alone", f">= {TARGETS['loader']:,} img/s", f"{v:,.0f} img/s" if v else "-",
                  judge(v, v and v >= TARGETS["loader"])))
    v = fed and fed.get("of_ceiling")
    lines.append(("loader-fed compiled training", f">= {TARGETS['of_ceiling']:.0%} of ceiling",
                  f"{v:.0%} ({fed['images_per_s']:,.0f} of {ceiling['images_per_s']:,.0f} img/s)" if v else "-",
                  judge(v, v and v >= TARGETS["of_ceiling"])))
    v = epoch and epoch["epoch_s"] * FULL_TRAIN / max(epoch["train_samples"], 1)
    lines.append(("whole 61,578-image epoch incl. validation", f"<= {TARGETS['epoch_s']:.0f} s",
                  f"{v:.1f} s (measured {epoch['epoch_s']:.1f} s on {epoch['train_samples']:,})" if v else "-",
                  judge(v, v and v <= TARGETS["epoch_s"])))
    v = epoch and epoch["first_batch_wait_s"]
    lines.append(("stage change: training time lost", f"<= {TARGETS['stage_change_s']} s",
                  f"{v:.2f} s" if v is not None else "-", judge(v, v is not None and v <= TARGETS["stage_change_s"])))
    return lines


def verdict_table(lines) -> str:
    out = ["| check | target | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=os.environ.get("SHARDS") or None, help="packed set (default: synthesize one)")
    ap.add_argument("--quick", action="store_true", help="the dry form for a CPU")
    ap.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    t0 = time.time()
    found, missing = environment()
    if "nvidia.dali" not in found and unpack_dali_bundle():
        return 0
    say("found " + ", ".join(f"{k} {v}" for k, v in found.items()))
    if missing:
        say("missing " + "; ".join(missing))
    if "torch" not in found:
        print("gpu-check: error: torch is missing; it must come with the machine", file=sys.stderr)
        return 2
    gpu = found.get("cuda", "none") != "none"
    if not gpu and not args.quick:
        print("gpu-check: error: no CUDA GPU here; on a CPU run the dry form: --quick", file=sys.stderr)
        return 2
    shards = args.shards or make_shards(args.quick)
    say(f"shards: {shards}")

    tests = "skipped"
    if not args.skip_tests:
        env_gz2 = real_jpegs()
        if env_gz2:
            os.environ["GZ2_SHARED"] = env_gz2
        say(f"pytest -m gpu (real JPEGs: {env_gz2 or 'none: those tests skip'})")
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                             cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
        print(res.stdout[-4000:], res.stderr[-2000:], sep="\n", flush=True)
        summary = (res.stdout.strip().splitlines() or ["no output"])[-1]
        tests = f"passed ({summary})" if res.returncode == 0 else f"FAIL ({summary})"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("epoch_time-*.json"))
    bench = [sys.executable, str(REPO / "benchmarks" / "epoch_time.py"), "--shards", shards, "--out", str(out),
             "--what", "loaders,synthetic,train,epoch"]
    bench += (["--quick", "--image-size", "32", "--batch-size", "16", "--warmup", "1", "--batches", "3", "--repeats", "2",
               "--loaders", "dali-cpu"] if args.quick else ["--loaders", "dali-gpu,pil", "--warmup", "5", "--batches", "30"])
    say(" ".join(bench[1:]))
    if shell(bench):
        print("gpu-check: error: benchmarks/epoch_time.py failed (its message is above)", file=sys.stderr)
        return 1
    [result_path] = set(out.glob("epoch_time-*.json")) - before
    result = json.loads(result_path.read_text())
    lines = verdict(result, gpu, tests)
    table = verdict_table(lines)
    stem = result_path.with_name(result_path.name.replace("epoch_time-", "gpu_check-")).with_suffix("")
    prov = result["provenance"]
    stem.with_suffix(".md").write_text(f"# gpu-check {prov['date']}\n\nGPU: {prov['gpu']}; commit {prov['git_commit'][:10]}; "
                                       f"versions {', '.join(f'{k} {v}' for k, v in prov['versions'].items())}; "
                                       f"shards {shards}\n\n{table}\n\nDetails: {result_path.name}\n")
    stem.with_suffix(".json").write_text(json.dumps({"verdict": lines, "benchmark": result_path.name,
                                                     "environment": found, "missing": missing}, indent=1) + "\n")
    print("\n" + table + f"\n\nresults: {stem.with_suffix('.md')} ({time.time() - t0:.0f} s)")
    return 0 if all(v[3] in ("PASS", "skipped", "n/a (no GPU)") for v in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
