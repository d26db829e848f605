"""Shards on S3-compatible object storage, against moto's S3 server started here in its own process (DALI's
S3 client holds the GIL while a pipeline builds, so the server cannot be a thread of this process)."""
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from gzfast.loaders import make_loader
from gzfast.train import main
from shard_tools import objstore
from shard_tools.layout import LayoutError, PackedSet
from shard_tools.push import push

from helpers import REPO

pytest.importorskip("moto.server", reason="the S3 tests need moto's server: pip install 'moto[server]'")

BUCKET = "gzfast-test"
SECRET = "not-a-real-secret-0123456789"
TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16",
        "--workers", "1", "--log-every", "2", "--no-plot", "--ceiling-probe", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"  # an IP: DALI's S3 client wants one
        assert proc.poll() is None, "moto server did not start"
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("moto server did not open its port")


@pytest.fixture(scope="module")
def s3(synth_shards):
    """A moto S3 server, the AWS_* variables of this process pointing at it, and the synthetic set pushed."""
    proc, url = start_moto()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        objstore._clients.clear()
        objstore.client().create_bucket(Bucket=BUCKET)
        push(synth_shards, f"s3://{BUCKET}/set", progress=False)
        yield f"s3://{BUCKET}/set"
        objstore._clients.clear()
    proc.kill()
    proc.wait()


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "shard_tools", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=timeout)


def test_push_uploads_every_file_with_the_manifest_last_and_verify_accepts_it(s3, synth_shards, monkeypatch):
    sent = []
    real = objstore.upload
    monkeypatch.setattr(objstore, "upload", lambda local, url: (sent.append(url), real(local, url)))
    push(synth_shards, f"s3://{BUCKET}/again/", progress=False)
    local = sorted(str(p.relative_to(synth_shards)) for p in synth_shards.rglob("*") if p.is_file() and p.name != ".pack.lock")
    assert sorted(u.removeprefix(f"s3://{BUCKET}/again/") for u in sent) == local
    assert sent[-1].endswith("/manifest.json")
    res = run_cli("verify", s3, "--decode")
    assert res.returncode == 0 and "is sound" in res.stdout, res.stderr
    packed = PackedSet.open(s3)
    assert packed.paths("val")[0].startswith(f"{s3}/val/") and packed.fingerprint == PackedSet.open(synth_shards).fingerprint


def test_a_push_that_stops_half_way_leaves_no_valid_set(s3, synth_shards, monkeypatch):
    push(synth_shards, f"s3://{BUCKET}/half", progress=False)
    sent = []
    real = objstore.upload

    def failing(local, url):
        if len(sent) == 3:
            raise objstore.ObjStoreError(f"{url}: upload failed (simulated)")
        sent.append(url)
        real(local, url)

    monkeypatch.setattr(objstore, "upload", failing)
    with pytest.raises(objstore.ObjStoreError):
        push(synth_shards, f"s3://{BUCKET}/half", progress=False)
    with pytest.raises(LayoutError, match="no manifest"):  # the old set stopped being valid before it changed
        PackedSet.open(f"s3://{BUCKET}/half")


@pytest.mark.parametrize("loader", ["dali-cpu", "pil"])
@pytest.mark.slow
def test_an_epoch_from_s3_is_the_epoch_from_the_local_copy(s3, synth_shards, loader):
    def epoch(root):
        kw = dict(train=True, batch_size=16, image_size=32, crop_size=128, seed=3, epoch=1, workers=1)
        return [(b.ids.clone(), b.labels.clone(), b.images.clone())
                for b in make_loader(loader, PackedSet.open(root).paths("train"), **kw)]

    local, remote = epoch(synth_shards), epoch(s3)
    assert len(local) == len(remote) > 0
    for (ia, la, xa), (ib, lb, xb) in zip(local, remote):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(xa, xb)


@pytest.mark.slow
def test_the_trainer_reads_s3_and_writes_no_credential(s3, tmp_path):
    run = tmp_path / "run"
    assert main(["--shards", s3, "--out", str(run), *TINY, "--loader", "dali-cpu", "--epochs", "1"]) == 0
    for f in [run / "config.json", run / "metrics.jsonl", *(run / "checkpoints").iterdir()]:
        assert SECRET.encode() not in f.read_bytes(), f
    assert '"shards": "' + s3 in (run / "config.json").read_text()


def test_a_missing_object_is_named(s3, synth_shards, tmp_path, capsys):
    url = f"s3://{BUCKET}/broken"
    push(synth_shards, url, progress=False)
    gone = f"{url}/{PackedSet.open(synth_shards).select('train')[0].relpath}"
    objstore.delete(gone)
    assert main(["--shards", url, "--out", str(tmp_path / "run"), *TINY, "--loader", "dali-cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error:") and f"{gone}: no such object" in err
    res = run_cli("verify", url)
    assert res.returncode == 1 and "shard file missing" in res.stderr


@pytest.mark.slow
def test_wrong_credentials_an_unreachable_and_a_silent_store_end_in_one_line(s3, synth_shards, monkeypatch):
    proc, strict = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # checks every key: ours is unknown there
    try:
        for cmd in (["verify", s3], ["push", str(synth_shards), s3]):
            res = run_cli(*cmd, env={"AWS_ENDPOINT_URL": strict})
            assert res.returncode == 2 and "refused the credentials" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and SECRET not in res.stderr + res.stdout
    finally:
        proc.kill()
        proc.wait()
    t0 = time.time()
    res = run_cli("verify", s3, env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert res.returncode == 2 and "cannot reach the object store" in res.stderr and time.time() - t0 < 60
    # a store that accepts connections and never answers: a bounded wait (shortened here), then an error
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(objstore, "READ_TIMEOUT_S", 1)
        monkeypatch.setattr(objstore, "_clients", {})
        t0 = time.time()
        with pytest.raises(LayoutError, match="stopped answering"):
            PackedSet.open(s3)
        assert time.time() - t0 < 15


@pytest.mark.slow
def test_predict_and_evaluate_read_s3(s3, synth_shards, tmp_path):
    """A run trained on the s3:// set predicts its test shards and evaluates its val shards from there, with
    the ids of the local copy."""
    import csv

    from gzfast import evaluate, predict
    run = tmp_path / "run"
    assert main(["--shards", s3, "--out", str(run), *TINY, "--loader", "dali-cpu", "--epochs", "1"]) == 0
    for shards in (f"{s3}/test", s3):
        out = tmp_path / "submission.csv"
        assert predict.main(["--run", str(run), "--shards", shards, "--out", str(out), "--tta", "1",
                             "--loader", "dali-cpu"]) == 0
        ids = sorted(int(row["GalaxyID"]) for row in csv.DictReader(out.open()))
        local = PackedSet.open(synth_shards)
        expected = sorted(int(b) for b in torch.cat([b.ids for b in make_loader(
            "dali-cpu", local.paths("test"), train=False, batch_size=16, image_size=32)]).tolist())
        assert ids == expected
    assert evaluate.main(["--run", str(run), "--shards", s3, "--tta", "1", "--loader", "dali-cpu", "--no-plot"]) == 0
    report = __import__("json").loads((run / "eval.json").read_text())
    assert report["shards"].startswith("s3://") and SECRET not in (run / "eval.json").read_text()


@pytest.mark.slow
def test_a_pil_run_over_s3_resumes_exactly_with_another_worker_count(s3, tmp_path, monkeypatch):
    """The pil loader reads samples at their index offsets, so its stream does not depend on the worker
    count, remote or local: a run stopped after epoch 1 and resumed with other --workers ends where an
    unbroken run ends."""
    import json

    from gzfast import train as train_mod
    from gzfast.train import TIMING_KEYS

    w = TINY.index("--workers")
    args = ["--shards", s3, *TINY[:w], *TINY[w + 2:], "--loader", "pil", "--epochs", "2", "--deterministic"]

    def untimed(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    def same(a, b):
        """Equal records; floats to 1e-5 (torch's thread count follows the workers', and with it the order
        of float sums: the data stream is the same, the last bits of a loss need not be)."""
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == pytest.approx(b, rel=1e-5) if isinstance(a, float) else a == b

    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight), "--workers", "0"]) == 0
    real_end = train_mod.Trainer.end_epoch

    def end_then_interrupt(self, state):
        real_end(self, state)
        raise KeyboardInterrupt  # a second Ctrl-C right after epoch 1's checkpoint

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(train_mod.Trainer, "end_epoch", end_then_interrupt)
        assert main([*args, "--out", str(stopped), "--workers", "0"]) == 130
    assert main([*args, "--out", str(stopped), "--workers", "1", "--resume"]) == 0
    assert same(untimed(stopped), untimed(straight))
