"""Packing any catalogue: a GZ2 vote-count catalogue with mixed images, string ids with a tree of one's own,
the stored image geometry, and the packed set's new fields; plus the torch-free tar writer."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shard_tools import images, objstore
from shard_tools.layout import MANIFEST, LayoutError, PackedSet
from shard_tools.pack import PackOptions, pack, pack_catalog
from shard_tools.schema import tier_of
from shard_tools.shards import tar_bytes
from shard_tools.synth import synthesize
from shard_tools.trees import load_tree
from shard_tools.user_catalog import CatalogSpec
from shard_tools.verify import verify

from helpers import REPO, csv_labels, load_manifest, read_shard_samples

EXAMPLE_TREE = REPO / "docs" / "examples" / "ring-merger.yaml"


def samples_of(out) -> dict[str, dict]:
    found = {}
    for shard in load_manifest(out)["shards"]:
        for key, parts in read_shard_samples(out / shard["path"]).items():
            assert key not in found
            found[key] = dict(parts, split=shard["split"], tier=shard["tier"])
    return found


@pytest.fixture(scope="module")
def gz2_catalog(tmp_path_factory):
    """96 synthetic galaxies in GZ2 naming: vote counts, JPEG/PNG, RGB/grey, 256/424/512 px."""
    out = tmp_path_factory.mktemp("gz2cat")
    synthesize(out, 96, seed=5, workers=2, progress=False, layout="gz2")
    return out


@pytest.fixture(scope="module")
def gz2_packed(gz2_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("gz2packed")
    spec = CatalogSpec(gz2_catalog / "catalog.csv", gz2_catalog / "images", load_tree("gz2"))
    pack_catalog(spec, out, PackOptions(shard_size=16, val_fraction=0.15), workers=2, progress=False)
    return out


def test_a_gz2_count_catalogue_with_mixed_images_packs_and_verifies(gz2_catalog, gz2_packed):
    tree = load_tree("gz2")
    manifest = load_manifest(gz2_packed)
    assert manifest["tree"] == tree.to_dict() and manifest["has_counts"] is True and manifest["labels"] == "counts"
    assert manifest["image"]["side"] == 424 and manifest["ids"] == {"kind": "integer", "column": "dr7objid", "table": None}
    assert manifest["counts"]["accepted"] == 96 and manifest["counts"]["rejected"] == 0
    assert verify(gz2_packed, decode=True) == []
    packed = PackedSet.open(gz2_packed)
    assert packed.tree == tree and packed.has_counts and packed.image_side == 424 and packed.id_names() is None

    catalog = pd.read_csv(gz2_catalog / "catalog.csv", dtype={"dr7objid": str})
    counts_by_id = {int(r["dr7objid"]): r[tree.count_columns()].to_numpy(np.float32) for _, r in catalog.iterrows()}
    files = dict(zip(catalog["dr7objid"].astype(int), catalog["file_loc"]))
    kinds = set()
    for key, s in samples_of(gz2_packed).items():
        gid = int(key)
        assert np.frombuffer(s["i64"], "<i8")[0] == gid
        labels, counts = np.frombuffer(s["f32"], "<f4"), np.frombuffer(s["cnt"], "<f4")
        assert len(labels) == len(counts) == tree.n
        assert counts.tobytes() == counts_by_id[gid].tobytes()
        assert np.allclose(labels, tree.fractions_from_counts(counts), atol=1e-6)
        assert tree.check_constraints(labels, 1e-5)[0]
        if s["split"] == "train":
            assert s["tier"] == tier_of(tree.confidence(labels))
        source = (gz2_catalog / "images" / files[gid]).read_bytes()
        with Image.open(io.BytesIO(source)) as im:
            kind = (im.format, im.size[0], im.mode)
        kinds.add(kind)
        with Image.open(io.BytesIO(s["jpg"])) as stored:
            assert stored.format == "JPEG" and stored.size == (424, 424) and stored.mode == kind[2]
        # a 424 px RGB or grey JPEG is kept byte for byte; everything else is re-encoded
        assert (s["jpg"] == source) == (kind[0] == "JPEG" and kind[1] == 424)
    assert kinds >= {("JPEG", 424, "RGB"), ("PNG", 256, "RGB"), ("JPEG", 512, "L"), ("PNG", 424, "L"),
                     ("PNG", 512, "RGB")}
    tiers = {s["tier"] for s in samples_of(gz2_packed).values() if s["split"] == "train"}
    assert len(tiers) >= 2  # confidence spreads the volunteers' agreement over tiers


def test_dali_reads_every_part_of_a_counts_set(gz2_packed):
    from nvidia.dali import fn, pipeline_def, types
    shards = load_manifest(gz2_packed)["shards"]

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        jpg, i64, f32, cnt = fn.readers.webdataset(
            paths=[str(gz2_packed / s["path"]) for s in shards], index_paths=[str(gz2_packed / s["index"]) for s in shards],
            ext=["jpg", "i64", "f32", "cnt"], dtypes=[types.UINT8, types.INT64, types.FLOAT, types.FLOAT],
            missing_component_behavior="error", name="r", pad_last_batch=True)
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), i64, f32, cnt

    p = pipe()
    p.build()
    n, seen = p.reader_meta("r")["epoch_size"], {}
    while len(seen) < n:
        img, ids, f32, cnt = p.run()
        for k in range(len(ids)):
            seen[int(np.array(ids[k])[0])] = (np.array(img[k]).shape, np.array(f32[k]), np.array(cnt[k]))
    assert len(seen) == 96
    assert all(shape == (424, 424, 3) and f.shape == c.shape == (37,) for shape, f, c in seen.values())


def test_fractions_give_the_same_labels_as_counts_and_images_take_the_side_asked(gz2_catalog, gz2_packed, tmp_path):
    out = tmp_path / "fractions"
    spec = CatalogSpec(gz2_catalog / "catalog.csv", gz2_catalog / "images", load_tree("gz2"), labels="fractions",
                       side=128, fit="resize")
    manifest = pack_catalog(spec, out, PackOptions(shard_size=16, val_fraction=0.15), workers=1, progress=False)
    assert manifest["has_counts"] is False and manifest["labels"] == "fractions"
    assert manifest["image"] == {"side": 128, "fit": "resize", "jpeg_quality": images.JPEG_QUALITY}
    assert verify(out, decode=True) == []
    by_counts = samples_of(gz2_packed)
    for key, s in samples_of(out).items():
        assert "cnt" not in s and s["split"] == by_counts[key]["split"]
        # the catalogue's fractions have 6 decimals: the same labels to that precision
        assert np.allclose(np.frombuffer(s["f32"], "<f4"), np.frombuffer(by_counts[key]["f32"], "<f4"), atol=1e-5)
        assert Image.open(io.BytesIO(s["jpg"])).size == (128, 128)


def test_string_ids_with_a_tree_of_ones_own(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    synthesize(data, 48, seed=2, workers=2, progress=False, layout="ring-merger")
    res = subprocess.run([sys.executable, "-m", "shard_tools", "pack", "--catalog", str(data / "catalog.csv"),
                          "--images", str(data / "images"), "--tree", str(EXAMPLE_TREE), "--out", str(out),
                          "--shard-size", "16", "--workers", "1"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    assert "string ids" in res.stdout and "ids.csv" in res.stdout
    assert verify(out, decode=True) == []
    packed = PackedSet.open(out)
    names = packed.id_names()
    catalog = pd.read_csv(data / "catalog.csv", dtype=str)
    assert sorted(names.values()) == sorted(catalog["id_str"]) and packed.id_column == "id_str"
    assert list(names) == list(range(1, 49))  # ranks of the sorted ids
    assert [names[k] for k in sorted(names)] == sorted(catalog["id_str"])
    counts = {r["id_str"]: r[["ring_yes_count", "ring_no_count", "merger_yes_count", "merger_no_count"]]
              .to_numpy(np.float32) for _, r in catalog.iterrows()}
    for key, s in samples_of(out).items():
        assert "." not in key and key.isdigit() and np.frombuffer(s["i64"], "<i8")[0] == int(key)
        c = counts[names[int(key)]]
        assert np.frombuffer(s["cnt"], "<f4").tobytes() == c.tobytes()
        assert np.allclose(np.frombuffer(s["f32"], "<f4"), [c[0] / c[:2].sum(), c[1] / c[:2].sum(),
                                                            c[2] / c[2:].sum(), c[3] / c[2:].sum()])
    assert packed.tree == load_tree(str(EXAMPLE_TREE)) and packed.manifest["validation_rule"].count("id_str")


def test_the_kaggle_csv_as_a_catalogue_packs_the_same_labels_and_bytes(real_data, real_shards, tmp_path):
    """gz2-kaggle's catalogue has no file column: its images are <GalaxyID>.jpg in --images."""
    out = tmp_path / "cat"
    spec = CatalogSpec(real_data / "training_solutions_rev1.csv", real_data / "images_training_rev1",
                       load_tree("gz2-kaggle"))
    manifest = pack_catalog(spec, out, PackOptions(shard_size=64, val_fraction=0.0), workers=1, progress=False)
    assert manifest["counts"]["accepted"] == 2 and manifest["labels"] == "fractions"
    labels = csv_labels(real_data / "training_solutions_rev1.csv")
    kaggle = samples_of(real_shards)
    for key, s in samples_of(out).items():
        assert np.frombuffer(s["f32"], "<f4").tobytes() == labels[int(key)].tobytes()
        assert s["jpg"] == kaggle[key]["jpg"] == (real_data / "images_training_rev1" / f"{key}.jpg").read_bytes()


# --- the stored geometry -------------------------------------------------------------------------

def png(size, mode="RGB") -> bytes:
    arr = np.random.default_rng(1).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def test_to_square_crops_the_centre_or_resizes_the_whole():
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 50, 200))  # a white band on the left that a centre crop drops
    cropped, resized = images.to_square(img, 100, "crop"), images.to_square(img, 100, "resize")
    assert cropped.size == resized.size == (100, 100)
    assert np.asarray(cropped)[:, :10].max() == 0 and np.asarray(resized)[:, :10].min() > 200
    jpg, problem = images.square_jpeg(png((300, 200)), 64, "crop")
    assert problem is None and Image.open(io.BytesIO(jpg)).size == (64, 64)
    assert images.square_jpeg(png((300, 200)), 64, "crop")[0] == jpg  # deterministic
    assert images.image_problem(png((10, 10), "RGBA")).startswith("PNG colour mode RGBA is not supported")
    assert images.image_problem(b"GIF89a" + b"\0" * 40).startswith("not a JPEG or PNG")
    assert "cannot decode" in images.image_problem(png((64, 64))[:200])


def test_exif_orientation_is_applied_when_an_image_is_re_encoded():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°: the white half is then on top
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    jpg, problem = images.square_jpeg(buf.getvalue(), 40, "resize")
    out = np.asarray(Image.open(io.BytesIO(jpg)).convert("L"), dtype=float)
    assert problem is None and out[:15].mean() > 200 and out[-15:].mean() < 50
    assert Image.open(io.BytesIO(jpg)).getexif().get(0x0112) is None


# --- the tar writer and a machine without torch ------------------------------------------------------

def test_tars_are_the_bytes_webdatasets_writer_wrote():
    wds = pytest.importorskip("webdataset")
    samples = [(str(k), {"jpg": bytes([k]) * (100 + 37 * k), "i64": np.int64(k).astype("<i8").tobytes(),
                         "f32": np.full(37, k / 10, "<f4").tobytes()}) for k in range(1, 30)]
    buf = io.BytesIO()
    with wds.TarWriter(buf, user="gz2", group="gz2", mode=0o444, mtime=0, encoder=False) as sink:
        for key, parts in samples:
            sink.write({"__key__": key, **parts})
    assert tar_bytes(samples) == buf.getvalue()


BLOCK_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here (blocked by the test)")
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.slow
def test_pack_runs_where_torch_cannot_be_imported(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr
    data, out = tmp_path / "data", tmp_path / "out"
    for cmd in (["synth", "--out", str(data), "--layout", "gz2", "--n-train", "12", "--workers", "1"],
                ["pack", "--catalog", str(data / "catalog.csv"), "--images", str(data / "images"), "--tree", "gz2",
                 "--out", str(out), "--workers", "2", "--shard-size", "4"],
                ["verify", str(out), "--decode"]):
        res = subprocess.run([sys.executable, "-m", "shard_tools", *cmd], cwd=REPO, env=env, capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
    assert load_manifest(out)["counts"]["accepted"] == 12


# --- the packed set's own checks -------------------------------------------------------------------

def test_a_manifest_from_before_trees_means_gz2_kaggle(synth_shards, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(synth_shards, out)
    manifest = json.loads((out / MANIFEST).read_text())
    for key in ("tree", "has_counts", "labels", "image", "ids"):
        manifest.pop(key)
    (out / MANIFEST).write_text(json.dumps(manifest))
    packed = PackedSet.open(out)
    assert packed.tree == load_tree("gz2-kaggle") and packed.has_counts is False and packed.image_side == 424
    assert packed.id_kind == "integer" and packed.id_names() is None and packed.id_column == "GalaxyID"
    assert verify(out) == []


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m["thresholds"].update(high=0.5, low=0.9), "tier thresholds out of order"),
    (lambda m: m["shards"].append({**next(s for s in m["shards"] if s["split"] == "val"), "split": "train",
                                   "tier": "high"}), "is listed twice (as val and as train)"),
    (lambda m: m["shards"][0].update(tier="extreme"), "has tier 'extreme'"),
    (lambda m: m.update(tree={"name": "x", "questions": []}), "field tree"),
])
def test_every_reader_gets_the_manifest_checks_in_one_line(synth_shards, tmp_path, edit, expect):
    out = tmp_path / "bad"
    shutil.copytree(synth_shards, out)
    manifest = json.loads((out / MANIFEST).read_text())
    edit(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LayoutError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        PackedSet.open(out)
    res = subprocess.run([sys.executable, "-m", "shard_tools", "verify", str(out)], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("verify: error: ") and expect in res.stderr


@pytest.mark.parametrize("url, expect", [
    ("s3://Bad_Bucket!/x", "may hold only lowercase letters"), ("s3://ab/x", "is 2 characters long"),
    ("s3://" + "a" * 64 + "/x", "is 64 characters long"), ("s3://a..b/x", "two dots"),
    ("s3://192.168.1.1/x", "IP address"),
])
def test_a_bucket_name_that_cannot_exist_is_named_as_such(url, expect):
    with pytest.raises(objstore.ObjStoreError, match="cannot be an S3 bucket name") as info:
        objstore.split(url)
    assert expect in str(info.value) and "does not exist" not in str(info.value)
    assert objstore.split("s3://gzfast-test.v2/a/b") == ("gzfast-test.v2", "a/b")


def test_packing_the_same_catalogue_twice_gives_identical_shards(gz2_catalog, gz2_packed, tmp_path):
    again = tmp_path / "again"
    spec = CatalogSpec(gz2_catalog / "catalog.csv", gz2_catalog / "images", load_tree("gz2"))
    pack_catalog(spec, again, PackOptions(shard_size=16, val_fraction=0.15), workers=1, progress=False)
    a, b = load_manifest(gz2_packed), load_manifest(again)
    assert [(s["path"], s["sha256"]) for s in a["shards"]] == [(s["path"], s["sha256"]) for s in b["shards"]]
    assert a["input_fingerprint"] == b["input_fingerprint"]
    assert pack_catalog(spec, again, PackOptions(shard_size=16, val_fraction=0.15), workers=1, progress=False) == b


def test_data_and_catalog_packs_refuse_an_out_inside_their_input(synth_data, gz2_catalog, tmp_path):
    from shard_tools.pack import PackError
    with pytest.raises(PackError, match="--out is inside --data"):
        pack(synth_data, synth_data / "shards", progress=False)
    spec = CatalogSpec(gz2_catalog / "catalog.csv", gz2_catalog / "images", load_tree("gz2"))
    with pytest.raises(PackError, match="--out is inside --images"):
        pack_catalog(spec, gz2_catalog / "images" / "out", progress=False)
    assert not (synth_data / "shards").exists() and not (gz2_catalog / "images" / "out").exists()


def test_push_uploads_a_string_id_sets_table_before_the_manifest(tmp_path, monkeypatch):
    from shard_tools import push as push_module
    data, out = tmp_path / "data", tmp_path / "out"
    synthesize(data, 8, seed=3, workers=1, progress=False, layout="ring-merger")
    pack_catalog(CatalogSpec(data / "catalog.csv", data / "images", load_tree(str(EXAMPLE_TREE))), out,
                 PackOptions(shard_size=4), workers=1, progress=False)
    sent = []
    monkeypatch.setattr(objstore, "check_bucket", lambda url: None)
    monkeypatch.setattr(objstore, "exists", lambda url: False)
    monkeypatch.setattr(objstore, "upload", lambda local, url: sent.append(url))
    push_module.push(out, "s3://bucket/set", progress=False)
    assert "s3://bucket/set/ids.csv" in sent and sent[-1] == "s3://bucket/set/manifest.json"
    (out / "ids.csv").unlink()
    with pytest.raises(LayoutError, match="cannot read the id table"):
        push_module.push(out, "s3://bucket/set", progress=False)


def test_every_shard_tools_error_is_a_user_error():
    from shard_tools.catalog import CatalogError
    from shard_tools.errors import UserError
    from shard_tools.pack import PackError, PackStopped
    from shard_tools.synth import SynthError
    from shard_tools.trees import TreeError
    for cls in (CatalogError, PackError, PackStopped, SynthError, LayoutError, objstore.ObjStoreError, TreeError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    assert "shard_tools.layout" not in sys.modules or objstore.LayoutError is LayoutError
    res = subprocess.run([sys.executable, "-c", "import shard_tools.objstore, sys; "
                          "print('shard_tools.layout' in sys.modules)"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.stdout.strip() == "False"  # objstore stands alone: no import circle with layout


def _rewrite_shard(out, shard: dict, edit):
    """Rewrites one shard with `edit(key, parts)` applied, its index and the manifest's size and sha256 to
    match: only what verify reads inside the samples is wrong."""
    import hashlib

    from wds2idx import IndexCreator
    path = out / shard["path"]
    samples = [(k, {e: v for e, v in p.items()}) for k, p in read_shard_samples(path).items()]
    for key, parts in samples:
        edit(key, parts)
    data = tar_bytes(samples)
    path.write_bytes(data)
    with IndexCreator(str(path), str(out / shard["index"]), verbose=False) as creator:
        creator.create_index()
    manifest = json.loads((out / MANIFEST).read_text())
    for s in manifest["shards"]:
        if s["path"] == shard["path"]:
            s.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / MANIFEST).write_text(json.dumps(manifest))


def test_verify_checks_counts_and_lengths_against_the_manifests_tree(gz2_packed, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(gz2_packed, out)
    shards = [s for s in load_manifest(out)["shards"] if s["split"] == "train"]
    first = {}

    def more_votes(key, parts):
        if not first:
            first["key"] = key
            cnt = np.frombuffer(parts["cnt"], "<f4").copy()
            cnt[0] += 7  # more "smooth" votes: the fractions no longer follow
            parts["cnt"] = cnt.tobytes()

    def short_labels(key, parts):
        parts["f32"] = parts["f32"][:-4]

    _rewrite_shard(out, shards[0], more_votes)
    _rewrite_shard(out, shards[1], short_labels)
    problems = verify(out)
    assert f"{shards[0]['path']}: sample {first['key']}: .f32 does not follow from its .cnt vote counts" in problems
    assert any(p.startswith(f"{shards[1]['path']}: sample ") and ".f32 is 144 bytes, expected 148 (37 answers of the "
               "gz2 tree)" in p for p in problems), problems
    assert not any("sha256" in p or "index" in p for p in problems)


def _decals_counts(tree, rng, artifact: bool) -> np.ndarray:
    """Vote counts that obey the tree, with volunteers dropping out on the way as in real catalogues."""
    counts = np.zeros(tree.n)
    for q in tree.questions:
        reach = 20 if q.parent is None else int(counts[q.parent])
        reach = max(reach - int(rng.integers(0, 2)), 0) if q.parent is not None else reach
        if artifact and q.name == "merging":
            continue  # an all-"artifact" galaxy skips merging: unanswered, which the tree allows
        p = rng.dirichlet(np.ones(len(q.columns)))
        if artifact and q.name == "smooth-or-featured":
            p = np.array([0.0, 0.0, 1.0])
        counts[list(q.columns)] = rng.multinomial(reach, p)
    return counts


def test_a_decals_style_catalogue_with_iau_names_packs(tmp_path):
    tree = load_tree("gz-decals")
    rng = np.random.default_rng(7)
    (tmp_path / "images" / "J10").mkdir(parents=True)
    rows = []
    for i in range(6):
        name = f"J10{i:02d}00.80+00420{i}.0"
        Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "images" / "J10" / f"{name}.png")
        counts = _decals_counts(tree, rng, artifact=i == 0)
        row = {"iauname": name, "file_loc": f"J10/{name}.png"}
        row.update({c: int(n) for c, n in zip(tree.count_columns(), counts)})
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "decals.csv", index=False)
    out = tmp_path / "out"
    manifest = pack_catalog(CatalogSpec(tmp_path / "decals.csv", tmp_path / "images", tree, side=64), out,
                            PackOptions(val_fraction=0.0), workers=1, progress=False)
    assert manifest["counts"]["accepted"] == 6 and manifest["ids"]["kind"] == "string" and manifest["has_counts"]
    assert verify(out, decode=True) == []
    names = PackedSet.open(out).id_names()
    assert sorted(names.values()) == sorted(r["iauname"] for r in rows)
    artifact = next(k for k, v in names.items() if v == rows[0]["iauname"])
    labels = np.frombuffer(samples_of(out)[str(artifact)]["f32"], "<f4")
    assert labels[tree.columns.index("smooth-or-featured_artifact")] == 1.0
    assert labels[[i for i, c in enumerate(tree.columns) if c.startswith("merging_")]].sum() == 0
