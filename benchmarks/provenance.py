"""Where a measured figure came from: the machine, the GPU, the versions, the commit. Every result file
of the benchmarks carries it (airbench and timm's benchmark.py do the same)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("timm", "accelerate", "webdataset", "nvidia.dali")


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def versions() -> dict[str, str]:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in PACKAGES:
        try:
            out[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception as exc:  # noqa: BLE001 - report, don't fail, on a missing optional package
            out[mod] = f"unavailable ({type(exc).__name__})"
    return out


def provenance(**extra) -> dict:
    """The machine and code a result was measured on; `extra` (args, config) is added as given."""
    import torch
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpu": cpu_model(),
            "cpu_cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions(), "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")), **extra}
