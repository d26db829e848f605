"""Loaders on CPU: the batch contract, eval agreement, exactly-once, tier mixing, determinism."""
import os
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from gzfast.loaders import IMAGENET_MEAN, IMAGENET_STD, LoaderError, interleave_tiers, make_loader
from shard_tools import schema
from shard_tools.layout import PackedSet

from helpers import REPO, csv_labels, read_shard_samples

CPU_LOADERS = ["dali-cpu", "pil"]
STD255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def manifest_of(out):
    return PackedSet.open(out)


def collect(loader):
    images, labels, ids = [], [], []
    for b in loader:
        images.append(b.images.clone())
        labels.append(None if b.labels is None else b.labels.clone())
        ids.append(b.ids.clone())
    return images, labels, ids


@pytest.mark.parametrize("name", CPU_LOADERS)
@pytest.mark.parametrize("train", [True, False])
def test_batch_contract(name, train, synth_data, synth_shards):
    m = manifest_of(synth_shards)
    labels_by_id = csv_labels(synth_data / "training_solutions_rev1.csv")
    loader = make_loader(name, m.paths("train" if train else "val"), train=train, batch_size=8,
                         image_size=64, crop_size=96, workers=2)
    n = 0
    for _i, b in enumerate(loader):
        assert b.images.shape == (len(b), 3, 64, 64) and b.images.dtype == torch.float32
        assert b.images.is_contiguous(memory_format=torch.channels_last) and b.images.stride()[1] == 1
        lo = min((0 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD))
        hi = max((1 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD))
        assert lo - 1e-4 <= b.images.min() and b.images.max() <= hi + 1e-4
        assert b.images.std() > 0.05  # not a blank tensor
        assert b.ids.dtype == torch.int64 and b.labels.dtype == torch.float32 and b.labels.shape == (len(b), 37)
        for gid, lab in zip(b.ids.tolist(), b.labels.numpy()):
            assert lab.tobytes() == labels_by_id[gid].tobytes()
        if train:
            assert len(b) == 8  # partial batch dropped
        n += 1
    assert n == len(loader) > 0


@pytest.mark.parametrize("name", CPU_LOADERS)
def test_test_shards_have_no_labels(name, real_shards):
    loader = make_loader(name, manifest_of(real_shards).paths("test"), train=False, batch_size=50,
                         image_size=32, workers=1)
    _, labels, ids = collect(loader)
    assert all(lab is None for lab in labels)
    assert sum(len(i) for i in ids) == 146


def test_eval_outputs_agree_between_dali_and_pil_on_real_jpegs(real_shards):
    paths = manifest_of(real_shards).paths("test")
    out = {}
    for name in CPU_LOADERS:
        imgs, _, ids = collect(make_loader(name, paths, train=False, batch_size=16, workers=1))
        out[name] = {int(g): im for batch_i, batch_g in zip(imgs, ids) for g, im in zip(batch_g, batch_i)}
    assert out["dali-cpu"].keys() == out["pil"].keys() and len(out["pil"]) == 146
    worst = 0.0
    for gid, a in out["dali-cpu"].items():
        diff = ((a - out["pil"][gid]).unsqueeze(0) * STD255).abs().mean().item()  # in 0-255 pixel units
        worst = max(worst, diff)
    assert worst <= 1.0, worst


@pytest.mark.parametrize("name", CPU_LOADERS)
@pytest.mark.slow
def test_eval_reads_every_sample_exactly_once_on_one_and_two_ranks(name, synth_shards):
    m = manifest_of(synth_shards)
    paths = m.paths("train") + m.paths("val")
    expected = m.samples("train") + m.samples("val")
    one = collect(make_loader(name, paths, train=False, batch_size=16, workers=2))[2]
    ids_one = torch.cat(one).tolist()
    assert len(ids_one) == len(set(ids_one)) == expected
    per_rank = []
    for rank in range(2):
        loader = make_loader(name, paths, train=False, batch_size=16, rank=rank, world_size=2, workers=2)
        batches = collect(loader)[2]
        assert len(loader) == len(batches)
        per_rank.append(torch.cat(batches).tolist())
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(ids_one)


@pytest.mark.parametrize("name", CPU_LOADERS)
def test_eval_padding_repeats_the_last_row(name, synth_shards):
    m = manifest_of(synth_shards)
    loader = make_loader(name, m.paths("val"), train=False, batch_size=16, image_size=32, crop_size=128, workers=1,
                         pad_last_batch=True)
    real_ids, shapes = [], set()
    for b in loader:
        shapes.add((tuple(b.images.shape), tuple(b.labels.shape), tuple(b.ids.shape)))
        real_ids += b.ids[:len(b)].tolist()
        assert torch.equal(b.ids[len(b):], b.ids[len(b) - 1].expand(len(b.ids) - len(b)))  # padding repeats the last row
    assert shapes == {((16, 3, 32, 32), (16, 37), (16,))}
    assert sorted(real_ids) == sorted(set(real_ids)) and len(real_ids) == m.samples("val") and m.samples("val") % 16


@pytest.mark.parametrize("name", CPU_LOADERS)
def test_train_ranks_get_disjoint_equal_length_slices(name, synth_shards):
    paths = manifest_of(synth_shards).paths("train")
    loaders = [make_loader(name, paths, train=True, batch_size=8, rank=r, world_size=2, image_size=32, workers=1)
               for r in range(2)]
    assert len(loaders[0]) == len(loaders[1])
    ids = [torch.cat(collect(lo)[2]).tolist() for lo in loaders]
    assert len(ids[0]) == len(ids[1]) == 8 * len(loaders[0])
    if name == "dali-cpu":  # sample-level split; the PIL baseline splits by shard and may wrap a short rank
        assert not set(ids[0]) & set(ids[1])


@pytest.mark.parametrize("name", CPU_LOADERS)
@pytest.mark.slow
def test_tiers_are_mixed_from_the_start_of_an_epoch(name, mid_shards):
    """Shards 100 samples, shuffle buffer 64 of a 1,275-sample epoch (production: 4,096 of ~55,000)."""
    m = manifest_of(mid_shards)
    tier_of_id = {}
    for s in m.select("train"):
        tier_of_id.update({int(k): s.tier for k in read_shard_samples(s.path)})
    whole = Counter(tier_of_id.values())
    for seed in (0, 1):
        loader = make_loader(name, m.paths("train"), train=True, batch_size=16, image_size=16, seed=seed,
                             workers=1, shuffle_buffer=64)
        first = []
        for b in loader:
            first += b.ids.tolist()
            if len(first) >= 0.2 * len(tier_of_id):
                break
        share = Counter(tier_of_id[g] for g in first)
        for t in schema.TIERS:
            assert abs(share[t] / len(first) - whole[t] / len(tier_of_id)) <= 0.10, (t, share, whole)


def test_interleave_keeps_every_tier_spread_out():
    paths = [f"/x/train/high/h{i}.tar" for i in range(9)] + [f"/x/train/low/l{i}.tar" for i in range(3)]
    order = interleave_tiers(paths, seed=1, epoch=0)
    assert sorted(order) == sorted(paths)
    lows = [i for i, p in enumerate(order) if "/low/" in p]
    assert max(np.diff(lows)) <= 5  # one low shard in every ~4
    assert interleave_tiers(paths, 1, 0) == order and interleave_tiers(paths, 1, 1) != order


def test_same_seed_and_epoch_give_the_same_stream(synth_shards):
    paths = manifest_of(synth_shards).paths("train")
    def first_batches(epoch):
        loader = make_loader("dali-cpu", paths, train=True, batch_size=8, image_size=32, seed=5, epoch=epoch, workers=2)
        imgs, _, ids = collect(loader)
        return torch.cat(imgs[:3]), torch.cat(ids).tolist()
    a_img, a_ids = first_batches(0)
    b_img, b_ids = first_batches(0)
    c_img, c_ids = first_batches(1)
    assert a_ids == b_ids and torch.equal(a_img, b_img)
    assert a_ids != c_ids and sorted(a_ids) != a_ids  # another epoch reshuffles; the order is shuffled


def test_train_mode_augments_and_eval_does_not(real_shards):
    paths = manifest_of(real_shards).paths("train")
    def image_of(train, epoch):
        loader = make_loader("pil", paths, train=train, batch_size=1, image_size=64, seed=0, epoch=epoch, workers=0)
        return {int(b.ids[0]): b.images[0].clone() for b in loader}
    e0, e0b, t0, t1 = image_of(False, 0), image_of(False, 1), image_of(True, 0), image_of(True, 1)
    for gid in e0:
        assert torch.equal(e0[gid], e0b[gid])       # eval: center crop only, every epoch the same
        assert not torch.equal(t0[gid], t1[gid])    # train: rotation/flip differ between epochs


def test_bad_requests_fail_clearly(synth_shards, tmp_path):
    m = manifest_of(synth_shards)
    with pytest.raises(LoaderError, match="unknown loader"):
        make_loader("ffcv", m.paths("val"), train=False, batch_size=4)
    with pytest.raises(LoaderError, match="index missing"):
        make_loader("pil", [str(tmp_path / "nope.tar")], train=False, batch_size=4)
    with pytest.raises(LoaderError, match="mixes labelled"):
        make_loader("pil", m.paths("val") + m.paths("test"), train=False, batch_size=4)
    if not torch.cuda.is_available():
        with pytest.raises(LoaderError, match="dali-cpu or pil"):
            make_loader("dali-gpu", m.paths("val"), train=False, batch_size=4)


@pytest.mark.parametrize("name", CPU_LOADERS)
def test_an_undecodable_jpeg_in_a_shard_is_named(name, synth_shards, tmp_path):
    """A shard whose bytes went bad after packing: a LoaderError naming the shard and the sample."""
    import shutil

    from shard_tools.layout import index_path, read_index
    shard = manifest_of(synth_shards).paths("val")[0]
    bad = tmp_path / "gz2-val-000000.tar"
    shutil.copy(shard, bad)
    shutil.copy(index_path(shard), index_path(bad))
    jpg = next(e for e in read_index(index_path(bad))[2] if e.ext == "jpg")
    raw = bytearray(bad.read_bytes())
    raw[jpg.offset + 200: jpg.offset + jpg.size - 10] = bytes(jpg.size - 210)
    bad.write_bytes(bytes(raw))
    with pytest.raises(LoaderError, match=rf"{bad}: sample {jpg.key} does not decode"):
        for _ in make_loader(name, [str(bad)], train=False, batch_size=4, workers=1):
            pass


def _jpeg(array) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def geometry_shards(tmp_path_factory):
    """Two packed sets of synthetic ids with planted pictures: all white (blank corners would show as
    dark pixels) and a white bar from the centre to the right (its direction shows the rotation)."""
    from shard_tools.pack import PackOptions, pack
    from shard_tools.synth import synthesize
    out = {}
    white = np.full((424, 424, 3), 255, np.uint8)
    bar = np.zeros((424, 424, 3), np.uint8)
    bar[206:218, 212:424] = 255
    for name, picture in (("white", white), ("bar", bar)):
        data = tmp_path_factory.mktemp(f"{name}_data")
        synthesize(data, n_train=160, n_test=0, seed=4, workers=1, progress=False)
        for f in (data / "images_training_rev1").glob("*.jpg"):
            f.write_bytes(_jpeg(picture))
        out[name] = tmp_path_factory.mktemp(f"{name}_shards")
        pack(data, out[name], PackOptions(val_fraction=0.0, shard_size=80), workers=1, progress=False)
    return out


@pytest.mark.parametrize("name", CPU_LOADERS)
@pytest.mark.parametrize("image_size, crop_size, zoom, shift", [(48, 128, 0.0, 0.0), (224, 212, 0.0, 0.0),
                                                                 (40, 150, 0.15, 0.1)])
@pytest.mark.slow
def test_train_rotation_is_uniform_and_never_leaves_blank_corners(name, image_size, crop_size, zoom, shift,
                                                                   geometry_shards):
    kw = dict(train=True, batch_size=16, image_size=image_size, crop_size=crop_size, zoom=zoom, shift=shift,
              workers=1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    for epoch in range(2):
        for b in make_loader(name, PackedSet.open(geometry_shards["white"]).paths("train"), epoch=epoch, **kw):
            pixels = b.images * STD255 + mean
            assert pixels.min() > 200, "a blank (dark) corner in a rotated all-white image"
    angles = []
    for epoch in range(2):
        for b in make_loader(name, PackedSet.open(geometry_shards["bar"]).paths("train"), epoch=epoch, **kw):
            bright = (b.images * STD255 + mean).mean(1) > 128        # N×H×W
            ys, xs = torch.meshgrid(torch.arange(image_size) + 0.5, torch.arange(image_size) + 0.5, indexing="ij")
            for m in bright:
                w = m.float()
                cx, cy = (w * xs).sum() / w.sum() - image_size / 2, (w * ys).sum() / w.sum() - image_size / 2
                angles.append(float(torch.atan2(cy, cx)) % (2 * np.pi))
    # the bar's direction is uniform on the circle: a Kolmogorov-Smirnov distance a uniform sample of this
    # size stays under with probability > 0.99 (and every quadrant is visited)
    u = np.sort(np.array(angles) / (2 * np.pi))
    n = len(u)
    ks = max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))
    assert n >= 256 and ks < 1.63 / np.sqrt(n), (n, ks)


@pytest.mark.parametrize("name", CPU_LOADERS)
@pytest.mark.slow
def test_padded_eval_batches_have_one_shape_and_every_sample_once(name, synth_shards):
    m = manifest_of(synth_shards)
    loader = make_loader(name, m.paths("val"), train=False, batch_size=16, image_size=32, workers=2,
                         pad_last_batch=True)
    assert m.samples("val") % 16, "the val set must end in a partial batch for this test to mean something"
    for _ in range(2):  # an eval loader serves pass after pass
        shapes, ids, padded = set(), [], 0
        for b in loader:
            shapes.add(tuple(b.images.shape))
            assert b.labels.shape[0] == b.ids.shape[0] == b.images.shape[0]
            ids += b.ids[:len(b)].tolist()
            padded += b.images.shape[0] - len(b)
        assert shapes == {(16, 3, 32, 32)} and padded > 0
        assert len(ids) == len(set(ids)) == m.samples("val")


def test_an_eval_pass_reads_each_batch_once(synth_shards, monkeypatch):
    """The DALI eval pipeline is reused pass after pass: rewinding it must not decode a pass twice."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    calls = []
    real_next = DALIGenericIterator.__next__

    def counting_next(self):
        calls.append(1)
        return real_next(self)

    monkeypatch.setattr(DALIGenericIterator, "__next__", counting_next)
    loader = make_loader("dali-cpu", manifest_of(synth_shards).paths("val"), train=False, batch_size=16, image_size=32,
                         workers=1, pad_last_batch=True)
    for _ in range(2):
        assert sum(1 for _ in loader) == len(loader)
    # per pass: the iterator's first batch (run when it is built, once), each batch, the StopIteration
    assert len(calls) == 2 * (len(loader) + 1) + 1, (len(calls), len(loader))


@pytest.mark.parametrize("name", CPU_LOADERS)
def test_a_rank_with_nothing_to_evaluate_takes_part_with_an_empty_slice(name, synth_shards):
    """Two processes, one validation shard: pil splits by shard, so one rank has nothing (DALI splits by
    sample); each rank's loader says so by its length, and together they read every sample once."""
    m = manifest_of(synth_shards)
    one_shard = m.paths("val")[:1]
    n = m.select("val")[0].samples
    world = 2
    ids = []
    for rank in range(world):
        loader = make_loader(name, one_shard, train=False, batch_size=8, image_size=32, rank=rank, world_size=world,
                             workers=1, pad_last_batch=True)
        got = [b.ids[:len(b)] for b in loader]
        assert len(got) == len(loader)
        ids += torch.cat(got).tolist() if got else []
    assert sorted(ids) == sorted(set(ids)) and len(ids) == n


def test_the_pil_stream_does_not_depend_on_the_worker_count(synth_shards):
    """Local shards are read by index in an order fixed by (seed, epoch): 0, 1 or 2 workers, the same batches."""
    paths = manifest_of(synth_shards).paths("train")
    streams = []
    for workers in (0, 1, 2):
        loader = make_loader("pil", paths, train=True, batch_size=8, image_size=32, seed=3, epoch=1, workers=workers)
        imgs, _, ids = collect(loader)
        streams.append((torch.cat(ids).tolist(), torch.cat(imgs)))
    for ids, imgs in streams[1:]:
        assert ids == streams[0][0] and torch.equal(imgs, streams[0][1])
    assert sorted(streams[0][0]) != streams[0][0]  # shuffled


# A DALI pipeline left as uncollected garbage (in a reference cycle) when the pil loader forks its workers:
# collected inside a worker, its shutdown would wait forever for threads that exist only in the parent. This
# hung CI once (a dali-cpu test, then a pil one, in one process); the worker here collects on every read.
FORKED_AFTER_DALI = """
import gc, sys
from gzfast.loaders import make_loader
from gzfast.loaders import pil
from shard_tools.layout import PackedSet
paths = PackedSet.open(sys.argv[1]).paths("train")
kw = dict(train=True, batch_size=8, image_size=32, crop_size=128, seed=3, epoch=1, workers=1)
gc.disable()  # so the garbage is still there when the workers fork
dali = make_loader("dali-cpu", paths, **kw)
batches = iter(dali)
next(batches)
cycle = {"loader": dali, "batches": batches}
cycle["self"] = cycle
del dali, batches, cycle
read = pil._IndexedSamples.__getitem__
def collect_then_read(self, i):
    gc.collect()
    return read(self, i)
pil._IndexedSamples.__getitem__ = collect_then_read
print("pil epoch of", sum(1 for _ in make_loader("pil", paths, **kw)), "batches")
"""


@pytest.mark.slow
def test_pil_workers_forked_beside_a_dali_pipeline_s_garbage_finish_their_epoch(synth_shards):
    proc = subprocess.Popen([sys.executable, "-c", FORKED_AFTER_DALI, str(synth_shards)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the loader and its forked worker
        proc.communicate()
        pytest.fail("the pil epoch hung: a forked worker finalized the parent's DALI pipeline")
    assert proc.returncode == 0 and "pil epoch of" in out, err[-2000:]
