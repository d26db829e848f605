"""Packing: round trip on real files, determinism, idempotence, resume after a kill."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shard_tools import schema
from shard_tools.layout import MANIFEST
from shard_tools.pack import PackOptions, is_val, pack
from shard_tools.verify import verify

from helpers import REPO, csv_labels, load_manifest, read_rejected, read_shard_samples


def all_samples(out: Path) -> dict[str, dict]:
    manifest = load_manifest(out)
    found = {}
    for shard in manifest["shards"]:
        for key, parts in read_shard_samples(out / shard["path"]).items():
            assert key not in found
            found[key] = dict(parts, split=shard["split"], tier=shard["tier"])
    return found


def dali_read_ids(out: Path, shards: list[dict], exts: list[str]) -> list[int]:
    """Every GalaxyID that DALI's webdataset reader (CPU, with the .idx files) returns in one epoch."""
    from nvidia.dali import fn, pipeline_def, types

    paths = [str(out / s["path"]) for s in shards]
    idx = [str(out / s["index"]) for s in shards]

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        jpg, i64 = fn.readers.webdataset(paths=paths, index_paths=idx, ext=["jpg", "i64"],
                                         dtypes=[types.UINT8, types.INT64], missing_component_behavior="error",
                                         pad_last_batch=True, name="reader")
        return jpg, i64

    p = pipe()
    p.build()
    n = p.reader_meta("reader")["epoch_size"]
    ids = []
    while len(ids) < n:
        _, i64 = p.run()
        ids += [int(np.array(t)[0]) for t in i64]
    return ids[:n]


def test_real_round_trip_keeps_bytes_ids_and_labels(real_data, real_shards):
    manifest = load_manifest(real_shards)
    samples = all_samples(real_shards)
    test_files = sorted((real_data / "images_test_rev1").glob("*.jpg"))
    train_files = sorted((real_data / "images_training_rev1").glob("*.jpg"))
    assert len(test_files) == 146 and len(train_files) == 2
    counts = manifest["counts"]
    assert (counts["input"], counts["accepted"], counts["rejected"], counts["test"]) == (148, 148, 0, 146)
    labels = csv_labels(real_data / "training_solutions_rev1.csv")
    for f in test_files + train_files:
        s = samples[f.stem]
        assert s["jpg"] == f.read_bytes()  # original bytes, never re-encoded
        assert np.frombuffer(s["i64"], "<i8")[0] == int(f.stem)
    for f in test_files:
        assert "f32" not in samples[f.stem] and samples[f.stem]["split"] == "test"
    for f in train_files:
        got = np.frombuffer(samples[f.stem]["f32"], "<f4")
        assert got.tobytes() == labels[int(f.stem)].tobytes()  # bit-exact float32 of the CSV
        assert samples[f.stem]["tier"] == schema.tier_of(schema.confidence(got))
    # DALI (CPU) reads every sample exactly once through the .idx files
    ids = dali_read_ids(real_shards, manifest["shards"], ["jpg", "i64"])
    assert sorted(ids) == sorted(int(f.stem) for f in test_files + train_files)


def test_synthetic_set_labels_exact_and_ids_ordered(synth_data, synth_shards):
    manifest = load_manifest(synth_shards)
    labels = csv_labels(synth_data / "training_solutions_rev1.csv")
    samples = all_samples(synth_shards)
    labelled = {int(k): v for k, v in samples.items() if v["split"] != "test"}
    assert set(labelled) == set(labels)
    for gid, s in labelled.items():
        assert np.frombuffer(s["f32"], "<f4").tobytes() == labels[gid].tobytes()
        assert s["split"] == ("val" if is_val(gid, 0.15) else "train")
    for shard in manifest["shards"]:
        keys = [int(k) for k in read_shard_samples(synth_shards / shard["path"])]
        assert keys == sorted(keys)
        assert shard["path"].startswith({"train": f"train/{shard['tier']}/gz2-train-{shard['tier']}-",
                                         "val": "val/gz2-val-", "test": "test/gz2-test-"}[shard["split"]])
        assert (synth_shards / shard["index"]).exists()
    val = sum(s["split"] == "val" for s in labelled.values())
    assert 0.07 < val / len(labelled) < 0.25
    assert verify(synth_shards, decode=True) == []
    ids = dali_read_ids(synth_shards, manifest["shards"], ["jpg", "i64"])
    assert len(ids) == len(set(ids)) == len(samples)


def test_packing_twice_gives_identical_shards(synth_data, synth_shards, tmp_path):
    again = tmp_path / "again"
    pack(synth_data, again, PackOptions(shard_size=40, val_fraction=0.15), workers=1, progress=False)
    a, b = load_manifest(synth_shards), load_manifest(again)
    assert [(s["path"], s["sha256"]) for s in a["shards"]] == [(s["path"], s["sha256"]) for s in b["shards"]]
    for s in a["shards"]:
        assert hashlib.sha256((again / s["path"]).read_bytes()).hexdigest() == s["sha256"]
        assert (again / s["index"]).read_bytes() == (synth_shards / s["index"]).read_bytes()


def test_rerun_does_nothing_and_option_change_rebuilds(synth_data, tmp_path, capsys):
    out = tmp_path / "o"
    pack(synth_data, out, PackOptions(shard_size=100), workers=2, progress=False)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    pack(synth_data, out, PackOptions(shard_size=100), workers=2, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    m = pack(synth_data, out, PackOptions(shard_size=100, high=0.9), workers=2, progress=False)
    assert "nothing to do" not in capsys.readouterr().out
    assert m["thresholds"]["high"] == 0.9
    # shards of the old layout that the new one does not have are gone, the rest verifies
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.tar")}
    assert on_disk == {s["path"] for s in m["shards"]}
    assert verify(out) == []


@pytest.mark.slow
def test_killed_pack_resumes_to_a_sound_set(synth_data, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "shard_tools", "pack", "--data", str(synth_data), "--out", str(out),
           "--shard-size", "8", "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.tar"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists(), "pack finished before it could be killed"
    done = len(list((out / ".pack-state").rglob("*.json")))  # shards whose completion was recorded
    assert done >= 1
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming, {done} of " in res.stdout, res.stdout
    assert verify(out, decode=True) == []
    assert not list(out.rglob("*.tmp*"))
    assert load_manifest(out)["counts"]["accepted"] == 400
    assert len(read_rejected(out)) == 0
