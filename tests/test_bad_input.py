"""Every kind of bad input ends as documented: rejected with a reason, or a clear stop."""
import io
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shard_tools.catalog import CatalogError
from shard_tools.pack import PackOptions, pack
from shard_tools.synth import synthesize
from shard_tools.verify import verify

from helpers import REPO, load_manifest, read_rejected, read_shard_samples


def jpeg(mode="RGB", size=(424, 424), **kw) -> bytes:
    rng = np.random.default_rng(0)
    bands = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 60, (size[1], size[0], bands), dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    """A synthetic set with one planted problem per kind; returns (data dir, {id: expected reason part})."""
    data = tmp_path_factory.mktemp("bad")
    synthesize(data, n_train=24, n_test=4, seed=2, workers=1, progress=False)
    (data / "synth.json").unlink()
    csv = data / "training_solutions_rev1.csv"
    df = pd.read_csv(csv, dtype=str)
    ids = df["GalaxyID"].tolist()
    imgs = data / "images_training_rev1"
    expect = {}

    def plant(i, reason):
        expect[ids[i]] = reason
        return imgs / f"{ids[i]}.jpg"

    good = plant(0, "truncated").read_bytes()
    (imgs / f"{ids[0]}.jpg").write_bytes(good[: len(good) // 2])
    plant(1, "not a JPEG").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    plant(2, "empty file").write_bytes(b"")
    plant(3, "expected 424x424").write_bytes(jpeg(size=(400, 424)))
    plant(4, "CMYK").write_bytes(jpeg("CMYK"))
    plant(5, "image file missing").unlink()
    df.loc[6, "Class3.1"] = "nan"
    expect[ids[6]] = "non-finite"
    df.loc[7, "Class1.1"] = "1.7"
    expect[ids[7]] = "out of [0, 1]"
    df.loc[8, "Class10.1"] = str(float(df.loc[8, "Class10.1"]) + 0.2)
    expect[ids[8]] = "Q10"
    df.loc[9, "Class2.1"] = "abc"
    expect[ids[9]] = "non-numeric"
    df.to_csv(csv, index=False)
    # valid oddities: grayscale and progressive JPEGs pack and decode
    (imgs / f"{ids[10]}.jpg").write_bytes(jpeg("L"))
    (imgs / f"{ids[11]}.jpg").write_bytes(jpeg(progressive=True, quality=80))
    # an image with no label row, and a broken test image
    (imgs / "999999.jpg").write_bytes(jpeg())
    expect["999999"] = "no label row"
    test_img = sorted((data / "images_test_rev1").glob("*.jpg"))[0]
    test_img.write_bytes(test_img.read_bytes()[:3000])
    expect[test_img.stem] = "truncated"
    return data, expect, ids


@pytest.fixture(scope="module")
def bad_packed(bad_set, tmp_path_factory):
    data, _, _ = bad_set
    out = tmp_path_factory.mktemp("bad_out")
    pack(data, out, PackOptions(shard_size=10, val_fraction=0.0), workers=2, progress=False)
    return out


def test_each_bad_input_is_rejected_with_its_reason(bad_set, bad_packed, capsys):
    _, expect, _ = bad_set
    rejected = read_rejected(bad_packed)
    got = dict(zip(rejected["galaxy_id"], rejected["reason"]))
    assert set(got) == set(expect), (got, expect)
    for gid, part in expect.items():
        assert part in got[gid], (gid, got[gid])
    assert all(rejected["file"].str.len() > 0)
    counts = load_manifest(bad_packed)["counts"]
    assert counts["rejected"] == len(expect)
    assert counts["accepted"] + counts["rejected"] == counts["input"] == 24 + 4 + 1


def test_nothing_rejected_reaches_a_shard_and_the_rest_verifies(bad_set, bad_packed):
    _, expect, ids = bad_set
    keys = set()
    for s in load_manifest(bad_packed)["shards"]:
        keys |= set(read_shard_samples(bad_packed / s["path"]))
    assert not keys & set(expect)
    assert ids[10] in keys and ids[11] in keys
    assert verify(bad_packed, decode=True) == []


def test_grayscale_and_progressive_decode_to_three_channels_in_dali(bad_set, bad_packed):
    from nvidia.dali import fn, pipeline_def, types
    _, _, ids = bad_set
    shards = load_manifest(bad_packed)["shards"]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        jpg, i64 = fn.readers.webdataset(paths=[str(bad_packed / s["path"]) for s in shards],
                                         index_paths=[str(bad_packed / s["index"]) for s in shards],
                                         ext=["jpg", "i64"], dtypes=[types.UINT8, types.INT64], name="r",
                                         pad_last_batch=True)
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), i64

    p = pipe()
    p.build()
    seen = {}
    for _ in range(-(-p.reader_meta("r")["epoch_size"] // 4)):
        imgs, gids = p.run()
        for k in range(len(imgs)):
            seen[str(int(np.array(gids[k])[0]))] = np.array(imgs[k]).shape
    assert seen[ids[10]] == seen[ids[11]] == (424, 424, 3)


def run_pack(data, out):
    return subprocess.run([sys.executable, "-m", "shard_tools", "pack", "--data", str(data), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)


def test_duplicate_id_stops_with_a_clear_error(bad_set, tmp_path):
    data = tmp_path / "dup"
    shutil.copytree(bad_set[0], data)
    csv = data / "training_solutions_rev1.csv"
    df = pd.read_csv(csv, dtype=str)
    df.loc[3, "GalaxyID"] = df.loc[15, "GalaxyID"]
    df.to_csv(csv, index=False)
    res = run_pack(data, tmp_path / "out")
    assert res.returncode == 2
    assert "duplicated GalaxyID" in res.stderr and df.loc[15, "GalaxyID"] in res.stderr
    assert "lines 5, 17" in res.stderr and "training_solutions_rev1.csv" in res.stderr
    with pytest.raises(CatalogError):
        pack(data, tmp_path / "out2", progress=False)


def test_wrong_header_stops_with_a_clear_error(bad_set, tmp_path):
    data = tmp_path / "hdr"
    shutil.copytree(bad_set[0], data)
    csv = data / "training_solutions_rev1.csv"
    df = pd.read_csv(csv, dtype=str).rename(columns={"Class7.2": "Class7.9"})
    df.to_csv(csv, index=False)
    res = run_pack(data, tmp_path / "out")
    assert res.returncode == 2
    assert "header is not the Kaggle one" in res.stderr and "Class7.2" in res.stderr and "Class7.9" in res.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow
def test_verify_names_the_shard_and_sample_that_is_wrong(synth_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_shards, out)
    shards = load_manifest(out)["shards"]
    # 1) a flipped byte inside a JPEG of a train shard
    first = out / shards[0]["path"]
    raw = bytearray(first.read_bytes())
    raw[2000] ^= 0xFF
    first.write_bytes(bytes(raw))
    # 2) an index that points at wrong offsets
    idx = out / shards[1]["index"]
    lines = idx.read_text().splitlines()
    parts = lines[1].split()
    parts[1] = str(int(parts[1]) + 512)
    idx.write_text("\n".join([lines[0], " ".join(parts), *lines[2:]]) + "\n")
    res = subprocess.run([sys.executable, "-m", "shard_tools", "verify", str(out), "--decode"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{shards[0]['path']}: sha256 differs" in res.stderr
    assert f"{shards[1]['index']}: index disagrees" in res.stderr
    ok = subprocess.run([sys.executable, "-m", "shard_tools", "verify", str(synth_shards)], cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "sound" in ok.stdout
