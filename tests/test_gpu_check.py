"""`make gpu-check` rehearsed on the CPU, in a copy of the checkout laid out as the GPU machine receives
it: the tracked and untracked-not-ignored files, the carried `.gz2/`, no `../shared`, no venv beside it.
Its dry form writes every stage's file; a stage that does not fit the budget is recorded as skipped;
without DALI it stops in one line within seconds; a carried DALI bundle is unpacked and the check
restarts on it."""
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from helpers import REPO, shared_gz2

STAGE_FILES = ["1-environment.json", "2-loader.json", "3-step.json", "4-epoch.json", "5-tests.json", "6-inference.json"]
RETURNED_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the GPU machine sends back under --out
BLOCK_DALI = '''
import importlib.abc, importlib.machinery, os, sys
class DaliOnlyInTheBundle(importlib.abc.MetaPathFinder):
    """This machine has no DALI of its own: nvidia.dali comes from an unpacked bundle or not at all."""
    def find_spec(self, name, path=None, target=None):
        if name != "nvidia.dali":
            return None
        site = os.environ.get("GZFAST_DALI_SITE")
        if not site:
            raise ImportError(f"No module named {name!r}")
        return importlib.machinery.PathFinder.find_spec(name, [os.path.join(site, "nvidia")])
sys.meta_path.insert(0, DaliOnlyInTheBundle())
'''


def gpu_machine_copy(dest: Path) -> Path:
    """What a call to the GPU machine carries: the checkout's files (as git would send them) and `.gz2/`
    as `make gpu-data` fills it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    gz2 = shared_gz2()
    if gz2 is not None:
        shutil.copytree(gz2 / "test_images", dest / ".gz2" / "test_images")
        shutil.copytree(gz2 / "train_images", dest / ".gz2" / "train_images")
        head = (gz2 / "training_solutions_subset.csv").read_text().splitlines(keepends=True)[:51]
        (dest / ".gz2" / "training_solutions_subset.csv").write_text("".join(head))
    return dest


@pytest.fixture
def checkout(tmp_path) -> Path:
    return gpu_machine_copy(tmp_path / "checkout")


def run_check(checkout: Path, *args, pythonpath: str | None = None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GZ2_SHARED")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return res, time.monotonic() - t0


def stage_results(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


@pytest.mark.slow
def test_the_dry_form_writes_every_stage_as_it_ends(checkout, tmp_path):
    out = tmp_path / "out"
    res, _ = run_check(checkout, "--quick", "--out", str(out))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    results = stage_results(out)
    assert list(results) == STAGE_FILES
    for name, result in results.items():
        assert result["status"] == "done" and result["checks"], (name, result.get("error"))
    env = results["1-environment.json"]["details"]
    assert Path(env["gzfast_from"]).resolve() == (checkout / "gzfast").resolve()  # the copy's code, not ours
    assert results["2-loader.json"]["data"]["n_train"] == 200 and (checkout / "data" / "gpu-check-quick").is_dir()
    verdict = (out / "verdict.md").read_text()
    assert "not run" not in verdict and verdict.count("n/a (no GPU)") >= 6
    for row in ("dali-cpu loader alone", "dali-cpu-fed step", "whole 61,578-image epoch", "stage change",
                "fast GPU tests", "predict, 1 view(s)", "predict, 8 view(s)", "embed, 1 view(s)", "gpu-check wall time"):
        assert row in verdict
    fed = next(c for c in results["3-step.json"]["checks"] if c["check"] == "dali-cpu-fed step")
    assert "interleaved pairs" in fed["measured"]
    returned = list(out.iterdir())
    assert len(returned) <= 8 and all(RETURNED_NAME.match(p.name) and p.is_file() for p in returned)


@pytest.mark.slow
def test_a_stage_that_does_not_fit_the_budget_is_recorded_as_skipped(checkout, tmp_path):
    out = tmp_path / "out"
    res, _ = run_check(checkout, "--quick", "--budget-s", "1", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = stage_results(out)
    assert list(results) == STAGE_FILES
    assert results["1-environment.json"]["status"] == "done"  # always: the rest is read against it
    for name in STAGE_FILES[1:]:
        assert results[name]["status"] == "skipped: budget" and "of the budget left" in results[name]["error"]
    verdict = (out / "verdict.md").read_text()
    assert verdict.count("skipped: budget") == len(STAGE_FILES) - 1 and not (checkout / "data").exists()


@pytest.mark.slow
def test_without_dali_or_a_bundle_it_stops_in_one_line_within_seconds(checkout, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_DALI)
    out = tmp_path / "out"
    res, seconds = run_check(checkout, "--quick", "--out", str(out), pythonpath=str(blocker))
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: error: nvidia.dali (ImportError: No module named")
    assert "dali-bundle.sh" in lines[0] and ".dali-bundle/p0" in lines[0]
    assert seconds < 60 and not out.exists() and not (checkout / "data").exists()


def fake_bundle(folder: Path):
    """Three parts of an xz tar holding a stand-in DALI package, as dali-bundle.sh splits the real one."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b'__version__ = "0.0-fake"\n'
        info = tarfile.TarInfo("./nvidia/dali/__init__.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    packed = lzma.compress(raw.getvalue())
    folder.mkdir(parents=True)
    cut = [0, len(packed) // 3, 2 * len(packed) // 3, len(packed)]
    for k in range(3):
        (folder / f"p{k}").write_bytes(packed[cut[k]:cut[k + 1]])


@pytest.mark.slow
def test_a_carried_dali_bundle_is_unpacked_and_the_check_restarts_on_it(checkout, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_DALI)
    fake_bundle(checkout / ".dali-bundle")
    out = tmp_path / "out"
    res, _ = run_check(checkout, "--quick", "--budget-s", "1", "--out", str(out), pythonpath=str(blocker))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "unpacking the DALI bundle from" in res.stdout and "restarting on" in res.stdout
    assert (checkout / ".dali-bundle" / "site" / "nvidia" / "dali" / "__init__.py").is_file()
    environment = stage_results(out)["1-environment.json"]
    assert environment["details"]["found"]["nvidia.dali"] == "0.0-fake"


def test_the_bundle_is_found_inside_the_checkout_first_and_pytest_is_never_shadowed(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    from benchmarks import gpu_env

    inside, beside = tmp_path / "checkout" / ".dali-bundle", tmp_path / "dali-parts"
    monkeypatch.setattr(gpu_env, "BUNDLE_FOLDERS", (inside, beside))
    assert gpu_env.find_bundle() is None
    fake_bundle(beside)
    assert gpu_env.find_bundle() == beside
    fake_bundle(inside)
    assert gpu_env.find_bundle() == inside
    whole = (beside / "p2").read_bytes()
    (beside / "p2").write_bytes(whole[:-5])  # a part cut short on its way
    with pytest.raises(gpu_env.BundleError, match="cannot be unpacked"):
        gpu_env.unpack(beside)
    assert not (beside / "site").exists() and not list(beside.glob(".site.tmp-*"))
    site = gpu_env.unpack(inside)
    env = gpu_env.bundle_env(site, {"PYTHONPATH": "/elsewhere", "LD_LIBRARY_PATH": "/usr/lib/x"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(site) and env["PYTHONPATH"].endswith("/elsewhere")
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == str(site / "nvidia" / "cu13" / "lib") and libs[-1] == "/usr/lib/x" and len(libs) == 6

    monkeypatch.setattr(gpu_env, "REPO", tmp_path / "checkout")
    (tmp_path / "checkout" / ".gpu-site").mkdir()
    assert gpu_env.pytest_path_env({"PYTHONPATH": "a"}) == {"PYTHONPATH": "a"}  # this machine has pytest
    monkeypatch.setattr(gpu_env.importlib.util, "find_spec", lambda name: None)
    assert gpu_env.pytest_path_env({"PYTHONPATH": "a"})["PYTHONPATH"] == f"a{os.pathsep}{tmp_path / 'checkout' / '.gpu-site'}"
