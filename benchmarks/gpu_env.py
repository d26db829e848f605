"""What a borrowed GPU machine has, and DALI brought to one that has no package index.

The machine comes with torch, timm, accelerate, pandas, pillow, numpy and pytest, not with DALI or
webdataset: those travel as the three-part bundle that `tools/dali-bundle.sh` makes (an xz
tar split in p0 p1 p2), carried inside the checkout as the git-ignored `.dali-bundle/` or beside it in
`../dali-parts/`. `bring_dali` unpacks it once (into a temp folder renamed into place, so a killed
unpack is never trusted) and restarts the process on it: the dynamic loader reads LD_LIBRARY_PATH only
at start.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from shard_tools.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FOLDERS = (REPO / ".dali-bundle", REPO.parent / "dali-parts")
PARTS = ("p0", "p1", "p2")
SITE_ENV = "GZFAST_DALI_SITE"  # set once the process runs on an unpacked bundle (no second restart)
# the bundle's CUDA libraries (see dali-bundle.sh)
LIBRARY_DIRS = ("cu13/lib", "nvimgcodec", "libnvcomp/lib64", "nvjpeg2k/lib", "nvtiff/lib")
FROM_BUNDLE = ("nvidia.dali", "webdataset")
IMPORTED = ("torch", *FROM_BUNDLE)  # imported: a wheel whose libraries do not load fails here, not later
# found by name only (timm with torchvision takes seconds to import); their versions from the metadata
LOOKED_UP = {"timm": "timm", "accelerate": "accelerate", "pandas": "pandas", "PIL": "pillow", "numpy": "numpy",
             "yaml": "pyyaml", "tqdm": "tqdm", "safetensors": "safetensors", "pytest": "pytest"}
BUNDLE_HINT = ("bring them as the DALI bundle: where a package index is reachable, `bash tools/dali-bundle.sh "
               ".dali-bundle` in the checkout, then carry .dali-bundle/p0, p1 and p2 with it (or put them in ../dali-parts)")


class BundleError(UserError):
    """A carried DALI bundle that cannot be unpacked."""


def find_bundle() -> Path | None:
    """The folder holding all three parts, inside the checkout first."""
    return next((d for d in BUNDLE_FOLDERS if all((d / p).is_file() for p in PARTS)), None)


class _Parts:
    """The parts read one after another as one stream."""

    def __init__(self, paths):
        self.files = [open(p, "rb") for p in paths]

    def read(self, n=-1):
        out = b""
        while self.files and (n < 0 or len(out) < n):
            chunk = self.files[0].read(-1 if n < 0 else n - len(out))
            if not chunk:
                self.files.pop(0).close()
                continue
            out += chunk
        return out


def unpack(parts_dir: Path) -> Path:
    """`parts_dir/site`, unpacked from the parts unless a complete unpack is already there."""
    site = parts_dir / "site"
    if (site / "nvidia" / "dali").is_dir():
        return site
    tmp = parts_dir / f".site.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with lzma.open(_Parts([parts_dir / p for p in PARTS])) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            tar.extractall(tmp, filter="data")
            while xz.read(1 << 20):  # to the end of the stream: xz checks its footer and checksums there
                pass
    except (lzma.LZMAError, EOFError, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        sizes = ", ".join(f"{p} {(parts_dir / p).stat().st_size:,} bytes" for p in PARTS)
        raise BundleError(f"the DALI bundle in {parts_dir} cannot be unpacked ({type(exc).__name__}: {exc}; {sizes}); "
                          f"carry the three parts again as dali-bundle.sh made them") from None
    shutil.rmtree(site, ignore_errors=True)  # an older, incomplete one: ours, under our name
    tmp.rename(site)
    return site


def bundle_env(site: Path, env: dict | None = None) -> dict:
    """The environment that makes the unpacked bundle importable: its folder and the checkout on
    PYTHONPATH, its CUDA libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ if env is None else env)
    libs = [str(site / "nvidia" / d) for d in LIBRARY_DIRS]
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(site), str(REPO), env.get("PYTHONPATH", "")] if p)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    env[SITE_ENV] = str(site)
    return env


def importable(imported=IMPORTED, looked_up=LOOKED_UP) -> tuple[dict[str, str], dict[str, str]]:
    """({module: version}, {module: why not}): `imported` imported, `looked_up` found by name."""
    found, missing = {}, {}
    for mod in imported:
        try:
            found[mod] = str(getattr(importlib.import_module(mod), "__version__", "present"))
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
            text = str(exc).strip().splitlines()
            missing[mod] = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    for mod, dist in looked_up.items():
        if importlib.util.find_spec(mod) is None:
            missing[mod] = "not installed" + (" (.gpu-site has it)" if mod == "pytest" and (REPO / ".gpu-site").is_dir() else "")
            continue
        try:
            found[mod] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[mod] = "present"
    return found, missing


def bring_dali(argv: list[str], say) -> None:
    """If DALI or webdataset cannot be imported and a bundle is carried: unpack it and restart this
    command on it (no return). Otherwise returns and the caller reports what is missing."""
    if os.environ.get(SITE_ENV):
        return  # already restarted on it: what is still missing is missing
    _, missing = importable(FROM_BUNDLE)
    parts = find_bundle() if missing else None
    if parts is None:
        return
    say(f"{', '.join(missing)} not importable: unpacking the DALI bundle from {parts}")
    site = unpack(parts)
    say(f"restarting on {site}")
    os.execve(sys.executable, [sys.executable, *argv], bundle_env(site))


def pytest_path_env(env: dict) -> dict:
    """`.gpu-site` (pytest for a machine without one, `make gpu-data`) on PYTHONPATH only where pytest is
    missing: the machine's own pytest and its plugins are never shadowed."""
    site = REPO / ".gpu-site"
    if importlib.util.find_spec("pytest") is None and site.is_dir():
        env = dict(env, PYTHONPATH=os.pathsep.join(p for p in [env.get("PYTHONPATH", ""), str(site)] if p))
    return env


def driver_version() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - optional: nvidia-smi or pynvml, else unknown
        return None


def machine() -> dict:
    """The GPU, driver, CUDA, cores and memory of this machine."""
    import torch

    from gzfast.build import usable_cores
    facts = {"cpu_cores": os.cpu_count(), "usable_cores": usable_cores(), "python": sys.version.split()[0],
             "cpu": _cpu_model(),
             "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        line = next((x for x in meminfo.read_text().splitlines() if x.startswith("MemTotal:")), "")
        facts["ram_gib"] = round(int(line.split()[1]) / 2**20, 1) if line else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     driver=driver_version())
    return facts


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "unknown")
