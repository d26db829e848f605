"""The GPU path (`pytest -m gpu`; skipped without CUDA). Fast (the `tests` stage of `make gpu-check`):
dali-gpu's batch contract per precision, its agreement with dali-cpu on real JPEGs, exactly-once eval, a
resumed optimizer step without host syncs. Marked `gpu_slow` (`make gpu-test`): short compiled runs that
resume exactly."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gzfast.loaders import IMAGENET_MEAN, IMAGENET_STD, make_loader
from shard_tools.layout import PackedSet

from helpers import REPO, csv_labels

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")]

STD255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def all_batches(loader):
    out = []
    for b in loader:
        n = len(b)
        out.append((b.images[:n].float().cpu(), None if b.labels is None else b.labels[:n].cpu(), b.ids[:n].clone()))
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("train", [True, False])
def test_dali_gpu_batch_contract(dtype, train, synth_data, synth_shards):
    data = PackedSet.open(synth_shards)
    labels_by_id = csv_labels(synth_data / "training_solutions_rev1.csv")
    loader = make_loader("dali-gpu", data.paths("train" if train else "val"), train=train, batch_size=8,
                         image_size=64, crop_size=96, dtype=dtype)
    lo = min((0 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD))
    n = 0
    for b in loader:
        assert b.images.is_cuda and b.images.dtype == dtype and b.images.shape == (len(b), 3, 64, 64)
        assert b.images.is_contiguous(memory_format=torch.channels_last) and b.images.stride()[1] == 1
        assert lo - 1e-2 <= b.images.min().item() and b.images.max().item() <= hi + 1e-2
        assert b.images.float().std().item() > 0.05
        assert b.labels.is_cuda and b.labels.dtype == torch.float32 and b.labels.shape == (len(b), 37)
        assert not b.ids.is_cuda and b.ids.dtype == torch.int64  # ids stay on the CPU
        for gid, lab in zip(b.ids.tolist(), b.labels.cpu().numpy()):
            assert lab.tobytes() == labels_by_id[gid].tobytes()
        n += 1
    assert n == len(loader) > 0


def test_dali_gpu_decodes_real_jpegs_like_dali_cpu(real_shards):
    paths = PackedSet.open(real_shards).paths("test")
    out = {}
    for name in ("dali-gpu", "dali-cpu"):
        got = all_batches(make_loader(name, paths, train=False, batch_size=16, dtype=torch.float32,
                                      device="cuda" if name == "dali-gpu" else "cpu"))
        out[name] = {int(g): im for images, _, ids in got for g, im in zip(ids, images)}
    assert out["dali-gpu"].keys() == out["dali-cpu"].keys() and len(out["dali-cpu"]) == 146
    diffs = [((a - out["dali-cpu"][g]).unsqueeze(0) * STD255).abs().mean().item() for g, a in out["dali-gpu"].items()]
    assert max(diffs) <= 1.0, (max(diffs), sorted(diffs)[len(diffs) // 2])


def test_dali_gpu_eval_is_exactly_once_and_pads_to_one_shape(synth_shards):
    data = PackedSet.open(synth_shards)
    paths = data.paths("train") + data.paths("val")
    expected = data.samples("train") + data.samples("val")
    loader = make_loader("dali-gpu", paths, train=False, batch_size=16, image_size=32, pad_last_batch=True)
    for _ in range(2):  # the same pipeline serves a second pass
        shapes, ids = set(), []
        for b in loader:
            shapes.add(tuple(b.images.shape))
            ids += b.ids[:len(b)].tolist()
        assert len(ids) == len(set(ids)) == expected and shapes == {(16, 3, 32, 32)}


def test_a_resumed_optimizer_step_does_not_sync_with_the_host(tmp_path):
    """The optimizer state of a checkpoint (loaded on the CPU) is restored after Accelerate prepared the
    optimizer, so AdamW's step counters stay where its kernel reads them and a step never waits for the
    host (pytorch/pytorch#128208: one .item() per parameter when they sit on the GPU unfused)."""
    from gzfast.build import build_training
    from gzfast.config import TrainConfig
    from gzfast.train import mse

    cfg = TrainConfig(model="resnet10t", image_size=32, batch_size=8, compile="off", out=str(tmp_path)).resolve(True)
    images = torch.randn(8, 3, 32, 32, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    labels = torch.rand(8, 37, device="cuda")

    def backward(t):
        with t.accelerator.autocast():
            loss = mse(t.train_model(images), labels)
        t.accelerator.backward(loss)

    first = build_training(cfg)
    for _ in range(2):
        backward(first)
        first.optimizer.step()
        first.optimizer.zero_grad()
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=False)  # as the trainer loads a checkpoint
    resumed = build_training(cfg, model_state=saved["model"], optimizer_state=saved["optimizer"])
    steps = [s["step"] for s in resumed.optimizer.state.values()]
    assert steps and all(float(s) == 2.0 for s in steps)
    backward(resumed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the step raises
    try:
        resumed.optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(float(s["step"]) == 3.0 for s in resumed.optimizer.state.values())


TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16",
        "--loader", "dali-gpu", "--log-every", "2", "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--no-plot",
        "--compile", "on", "--curriculum", "high:1,all:1", "--deterministic"]


def launch(args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "gzfast/train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def untimed_epochs(run):
    from gzfast.train import TIMING_KEYS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows if r["kind"] == "epoch"]


@pytest.mark.gpu_slow
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_compiled_curriculum_run_on_dali_gpu_writes_metrics_and_resumes_exactly(precision, synth_shards, tmp_path):
    args = ["--shards", str(synth_shards), *TINY, "--precision", precision]
    straight = tmp_path / "straight"
    proc = launch([*args, "--out", str(straight)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    epochs = untimed_epochs(straight)
    assert [r["stage"] for r in epochs] == ["high", "all"] and all(0 < r["val_rmse"] < 0.5 for r in epochs)
    config = json.loads((straight / "config.json").read_text())
    assert (config["loader"], config["precision"], config["compile"]) == ("dali-gpu", precision, "on")
    # killed after epoch 1, then resumed: the same metrics as the straight run
    stopped = tmp_path / "stopped"
    proc = launch([*args, "--out", str(stopped)])
    deadline = time.time() + 600
    last = stopped / "checkpoints" / "last.pt"
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    proc = launch([*args, "--out", str(stopped), "--resume"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    resumed = untimed_epochs(stopped)
    assert [r["stage"] for r in resumed] == ["high", "all"]
    for a, b in zip(epochs, resumed):  # GPU kernels: equal to float noise, not necessarily bit for bit
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-3)
