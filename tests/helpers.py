"""Plain helpers shared by the tests (fixtures live in conftest.py)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from shard_tools import schema
from shard_tools.layout import REJECTED, PackedSet

REPO = Path(__file__).resolve().parents[1]


def shared_gz2() -> Path | None:
    path = Path(os.environ.get("GZ2_SHARED", REPO.parent / "shared" / "gz2"))
    return path if (path / "training_solutions_subset.csv").exists() else None


def assemble_real_layout(gz2: Path, dest: Path) -> Path:
    """The Kaggle layout from ../shared/gz2, which is not in it: the 146 test JPEGs as the test set, the
    2 real training JPEGs with real label rows of the subset attached to their ids."""
    (dest / "images_training_rev1").mkdir(parents=True)
    shutil.copytree(gz2 / "test_images", dest / "images_test_rev1")
    train_imgs = sorted((gz2 / "train_images").glob("*.jpg"))
    for p in train_imgs:
        shutil.copy(p, dest / "images_training_rev1" / p.name)
    labels = pd.read_csv(gz2 / "training_solutions_subset.csv", dtype=str, nrows=len(train_imgs))
    labels["GalaxyID"] = [p.stem for p in train_imgs]
    labels.to_csv(dest / "training_solutions_rev1.csv", index=False)
    return dest


def read_shard_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of one tar, in file order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def csv_labels(csv_path: Path) -> dict[int, np.ndarray]:
    """GalaxyID -> float32 labels, parsed the way a reader of the CSV would."""
    df = pd.read_csv(csv_path)
    return {int(g): row.astype(np.float32) for g, row in zip(df["GalaxyID"], df[schema.COLUMNS].to_numpy())}


def load_manifest(root) -> dict:
    return PackedSet.open(root).manifest


def read_rejected(out) -> pd.DataFrame:
    """OUT/rejected.csv as strings: galaxy_id, file, split, reason."""
    return pd.read_csv(Path(out) / REJECTED, dtype=str, keep_default_na=False)


# --- several processes: `accelerate launch` on the CPU (two gloo ranks through torchrun) -------------------

TINY_MP = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16",
           "--workers", "1", "--loader", "dali-cpu", "--lr-backbone", "1e-3", "--lr-head", "1e-3"]
ARGS = [*TINY_MP, "--curriculum", "high:1,all:1", "--log-every", "1", "--no-plot", "--deterministic"]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(shards, run, *extra, processes=2, env=None):
    """`accelerate launch --multi_gpu --num_processes 2` of the trainer (through tests/launch_train.py,
    which records each rank's ids), in its own session so the whole tree can be killed."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "tests/launch_train.py",
           "--shards", str(shards), "--out", str(run), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_all(proc):
    """kill -9 of the launcher and its ranks (torchrun starts each rank in a session of its own)."""
    for pid in rank_pids(proc.pid).values():
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)


def finish(proc, timeout=600):
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        raise


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the workers under an `accelerate launch` (torchrun runs inside the launcher)."""
    out = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        pid, ppid = map(int, line.split())
        if ppid == launcher:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = next((int(e.split(b"=")[1]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                out[rank] = pid
    return out
