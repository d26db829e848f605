"""Prediction for any tree and at catalogue scale: the output tables, a catalogue read without packing
(the same pixels as packed), chunks written as they complete and resumed, rejected rows, string ids."""
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fake_runs import fake_run
from PIL import Image

from gzfast import predict as predict_mod
from gzfast.loaders import make_loader
from gzfast.loaders.catalog import CatalogReader
from gzfast.loaders.folder import Geometry, ImageFiles, eval_spec
from gzfast.tables import ChunkedTable
from shard_tools.layout import PackedSet
from shard_tools.pack import PackOptions, pack_catalog
from shard_tools.schema import CSV_HEADER
from shard_tools.synth_catalogs import ring_merger_tree, write_catalog
from shard_tools.trees import builtin_tree
from shard_tools.user_catalog import CatalogSpec

from helpers import REPO, free_port

GZ2 = builtin_tree("gz2")
SMALL = {"model": "resnet10t", "side": 64, "fit": "crop", "crop_size": 44, "image_size": 32}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("predict: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def gz2_set(tmp_path_factory):
    """A synthetic GZ2-named catalogue (JPEG and PNG, RGB and greyscale, 256/424/512 px) packed at 64 px."""
    root = tmp_path_factory.mktemp("gz2cat")
    write_catalog(root / "cat", "gz2", 24, 0, 2, False)
    pack_catalog(CatalogSpec(root / "cat" / "catalog.csv", root / "cat" / "images", GZ2, side=64), root / "shards",
                 PackOptions(val_fraction=0.2, shard_size=8), workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def gz2_run(gz2_set, tmp_path_factory):
    data = PackedSet.open(gz2_set / "shards")
    return fake_run(tmp_path_factory.mktemp("runs") / "gz2", tree=GZ2, fingerprint=data.fingerprint, **SMALL)


@pytest.fixture(scope="module")
def small_images(gz2_set, tmp_path_factory) -> list[Path]:
    """The catalogue's 24 images as 64 px JPEGs: cheap rows for many-row catalogues."""
    folder = tmp_path_factory.mktemp("small")
    out = []
    for i, f in enumerate(sorted((gz2_set / "cat" / "images").rglob("*.*"))):
        Image.open(f).convert("RGB").resize((64, 64)).save(folder / f"g{i:02d}.jpg", quality=90)
        out.append(folder / f"g{i:02d}.jpg")
    return out


def many_rows(path: Path, images: list[Path], n: int, first_id: int = 10**6) -> Path:
    """A Parquet catalogue of n rows (unique dr7objid, images reused) beside the images."""
    pd.DataFrame({"dr7objid": [first_id + i for i in range(n)],
                  "file_loc": [images[i % len(images)].name for i in range(n)]}).to_parquet(path)
    return path


def run_predict(run, *args) -> int:
    return predict_mod.main(["--run", str(run), "--tta", "1", "--workers", "1", *map(str, args)])


# --- the same pixels, packed or not ------------------------------------------------------------------

def test_a_catalogue_image_gets_the_pixels_its_packed_copy_gets(gz2_set, gz2_run):
    """Each row's image through square_jpeg (as pack) and the pil eval transform equals the packed sample
    read by the pil loader, to the last bit, for every kind of image in the catalogue."""
    data = PackedSet.open(gz2_set / "shards")
    spec = eval_spec(8, 32, 44, "cpu", torch.float32, 1, side=64)
    loader = make_loader("pil", data.paths("train") + data.paths("val"), train=False, batch_size=8, image_size=32,
                         crop_size=44, workers=0, source_side=64, label_count=GZ2.n)
    packed = {int(i): img for b in loader for i, img in zip(b.ids, b.images)}
    reader = CatalogReader(gz2_set / "cat" / "catalog.csv", "dr7objid", "file_loc", gz2_set / "cat" / "images").scan()
    (_, items), = reader.chunks(100, [0])
    files = ImageFiles(items, spec, Geometry(64, "crop"))
    unpacked = {items[int(p)].id: img for b in files for p, img in zip(b.ids[:len(b)], b.images)}
    assert not files.rejected and len(unpacked) == len(packed) == 24 and set(unpacked) == set(packed)
    for gid, img in packed.items():
        assert torch.equal(img, unpacked[gid]), gid


def test_predictions_of_a_catalogue_equal_those_of_its_packed_set(gz2_set, gz2_run, tmp_path, capsys):
    cat, sh = tmp_path / "cat.parquet", tmp_path / "shards.parquet"
    assert run_predict(gz2_run, "--catalog", gz2_set / "cat" / "catalog.csv", "--images", gz2_set / "cat" / "images",
                       "--out", cat, "--chunk", "10") == 0
    assert run_predict(gz2_run, "--shards", gz2_set / "shards", "--split", "train", "--out", sh) == 0
    a, b = pd.read_parquet(cat), pd.read_parquet(sh)
    catalogue = pd.read_csv(gz2_set / "cat" / "catalog.csv")
    assert a["dr7objid"].tolist() == catalogue["dr7objid"].tolist()  # input order, every row once
    train = a.set_index("dr7objid").loc[b["dr7objid"]]
    assert len(b) == PackedSet.open(gz2_set / "shards").samples("train")
    assert np.array_equal(train.to_numpy(), b.set_index("dr7objid").to_numpy())


# --- the table of any tree ---------------------------------------------------------------------------

def test_a_tree_run_writes_per_question_fractions_named_by_its_answers(gz2_set, gz2_run, tmp_path, capsys):
    pq_out, csv_out = tmp_path / "p.parquet", tmp_path / "p.csv"
    for out in (pq_out, csv_out):
        assert run_predict(gz2_run, "--catalog", gz2_set / "cat" / "catalog.csv", "--images",
                           gz2_set / "cat" / "images", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "24 galaxies x 37 answers (per-question fractions)" in printed
    table = pd.read_parquet(pq_out)
    assert list(table.columns) == ["dr7objid", *(f"{c}_fraction" for c in GZ2.columns)]
    assert table["dr7objid"].dtype == np.int64 and table.iloc[:, 1:].dtypes.eq(np.float32).all()
    values = table.iloc[:, 1:].to_numpy(np.float64)
    for q in GZ2.questions:  # each question's answers sum to 1: the catalogues' per-question convention
        assert np.allclose(values[:, list(q.columns)].sum(axis=1), 1, atol=1e-5), q.name
    assert len({tuple(r) for r in values}) == 24
    meta = json.loads(pq.read_schema(pq_out).metadata[b"gzfast"])
    assert meta["command"] == "predict" and meta["tree"] == "gz2" and meta["tta"] == 1
    text = pd.read_csv(csv_out)
    assert list(text.columns) == list(table.columns) and np.abs(text.iloc[:, 1:].to_numpy() - values).max() < 6e-7
    assert "Kaggle's submission" in predict_mod.build_parser().format_help()
    assert "_concentration" in predict_mod.build_parser().format_help()


def test_a_dirichlet_run_adds_concentrations_and_takes_its_fractions_from_their_view_mean(gz2_set, tmp_path):
    run = fake_run(tmp_path / "d", head="dirichlet", tree=GZ2, has_counts=True, **SMALL)
    out = tmp_path / "d.parquet"
    assert predict_mod.main(["--run", str(run), "--catalog", str(gz2_set / "cat" / "catalog.csv"), "--images",
                             str(gz2_set / "cat" / "images"), "--out", str(out), "--tta", "2", "--workers", "1"]) == 0
    t = pd.read_parquet(out)
    frac = t[[f"{c}_fraction" for c in GZ2.columns]].to_numpy(np.float64)
    conc = t[[f"{c}_concentration" for c in GZ2.columns]].to_numpy(np.float64)
    assert ((conc >= 1) & (conc <= 100)).all()
    for q in GZ2.questions:  # the mean concentrations over the views, normalised per question
        cols = list(q.columns)
        assert np.allclose(frac[:, cols], conc[:, cols] / conc[:, cols].sum(axis=1, keepdims=True), atol=2e-6)


def test_string_ids_come_back_through_the_id_table_or_from_the_catalogue(tmp_path):
    tree = ring_merger_tree()
    write_catalog(tmp_path / "cat", "ring-merger", 16, 3, 2, False)
    pack_catalog(CatalogSpec(tmp_path / "cat" / "catalog.csv", tmp_path / "cat" / "images", tree, side=64),
                 tmp_path / "shards", PackOptions(val_fraction=0.3, shard_size=8), workers=2, progress=False)
    data = PackedSet.open(tmp_path / "shards")
    assert data.id_kind == "string"
    run = fake_run(tmp_path / "run", tree=tree, **SMALL)
    assert run_predict(run, "--shards", tmp_path / "shards", "--split", "val", "--out", tmp_path / "val.parquet") == 0
    assert run_predict(run, "--catalog", tmp_path / "cat" / "catalog.csv", "--images", tmp_path / "cat" / "images",
                       "--out", tmp_path / "all.csv") == 0
    val = pd.read_parquet(tmp_path / "val.parquet")
    names = pd.read_csv(tmp_path / "cat" / "catalog.csv", dtype=str)["id_str"]
    assert list(val.columns) == ["id_str", "ring_yes_fraction", "ring_no_fraction", "merger_yes_fraction",
                                 "merger_no_fraction"]
    assert len(val) == data.samples("val") and set(val["id_str"]) <= set(names) and val["id_str"].str.startswith("J").all()
    full = pd.read_csv(tmp_path / "all.csv", dtype={"id_str": str})
    assert full["id_str"].tolist() == names.tolist()
    got = full.set_index("id_str").loc[val["id_str"]].to_numpy()
    assert np.abs(got - val.set_index("id_str").to_numpy()).max() < 6e-7


# --- a Kaggle run on a catalogue ---------------------------------------------------------------------

def test_a_kaggle_run_on_a_catalogue_writes_the_submission_sorted_across_chunks(gz2_dir, tmp_path):
    run = fake_run(tmp_path / "run")
    ids = [int(p.stem) for p in (gz2_dir / "test_images").glob("*.jpg")]
    random.Random(0).shuffle(ids)
    pd.DataFrame({"GalaxyID": ids}).to_csv(tmp_path / "cat.csv", index=False)  # no file column: <id>.jpg
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_predict(run, "--catalog", tmp_path / "cat.csv", "--images", gz2_dir / "test_images", "--out", a,
                       "--chunk", "40") == 0
    assert run_predict(run, "--images", gz2_dir / "test_images", "--out", b) == 0
    lines = a.read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER) and [int(r.split(",")[0]) for r in lines[1:]] == sorted(ids)
    assert a.read_text() == b.read_text()  # four chunks merged by GalaxyID: the same file as one chunk


# --- rejected rows -----------------------------------------------------------------------------------

def test_rows_without_a_usable_image_are_listed_with_their_reason(gz2_run, small_images, tmp_path, capsys):
    folder = small_images[0].parent
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # would block a plain open(); rejected by its type, never read
    (tmp_path / "notes.jpg").write_text("not an image")
    rows = [(1, small_images[0].name), (2, "missing.jpg"), (3, str(fifo)), (4, str(tmp_path / "notes.jpg")),
            (1, small_images[1].name), ("", small_images[2].name), (5, ""), (6, str(small_images[3]))]
    with open(tmp_path / "cat.csv", "w", newline="") as f:
        csv.writer(f).writerows([("dr7objid", "file_loc"), *rows])
    out = tmp_path / "p.csv"
    assert run_predict(gz2_run, "--catalog", tmp_path / "cat.csv", "--images", folder, "--out", out) == 0
    captured = capsys.readouterr()
    assert pd.read_csv(out)["dr7objid"].tolist() == [1, 6]
    rejected = list(csv.DictReader(io.StringIO((tmp_path / "p.rejected.csv").read_text())))
    reasons = {r["file"].split(": ", 1)[0]: (r["id"], r["reason"]) for r in rejected}
    assert set(reasons) == {"cat.csv:3", "cat.csv:4", "cat.csv:5", "cat.csv:6", "cat.csv:7", "cat.csv:8"}
    assert "cannot read" in reasons["cat.csv:3"][1] and "FIFO" in reasons["cat.csv:4"][1]
    assert "not a JPEG or PNG" in reasons["cat.csv:5"][1] and "repeats cat.csv:2" in reasons["cat.csv:6"][1]
    assert reasons["cat.csv:7"][1] == "empty id" and reasons["cat.csv:8"] == ("5", "no image file named")
    assert len([line for line in captured.err.splitlines() if line.startswith("predict: skipped cat.csv:")]) == 6
    assert "6 file(s) rejected" in captured.out.strip().splitlines()[-1]


def test_a_parquet_id_column_with_a_null_keeps_every_other_id_exact(gz2_run, small_images, tmp_path):
    """A null in an int64 Parquet id column: numpy would read the column as floats and write ids that lost
    their last digits; the null row is rejected and every other id comes back exact, as pack reads them."""
    ids = [587722981741363294, None, 587722981741363301]
    cat = small_images[0].parent / "nulls.parquet"
    pq.write_table(pa.table({"dr7objid": pa.array(ids, pa.int64()),
                             "file_loc": [p.name for p in small_images[:3]]}), cat)
    out = tmp_path / "p.parquet"
    assert run_predict(gz2_run, "--catalog", cat, "--out", out) == 0
    assert pq.read_table(out).column("dr7objid").to_pylist() == [ids[0], ids[2]]
    rejected = list(csv.DictReader(io.StringIO((tmp_path / "p.parquet.rejected.csv").read_text())))
    assert [(r["id"], r["reason"]) for r in rejected] == [("", "empty id")]


# --- chunks, resuming, refusing other settings -----------------------------------------------------

def test_an_interrupted_prediction_continues_after_its_last_complete_chunk(gz2_run, small_images, tmp_path,
                                                                          monkeypatch, capsys):
    cat = many_rows(small_images[0].parent / "cat60.parquet", small_images, 60)
    ref, out = tmp_path / "ref.parquet", tmp_path / "out.parquet"
    args = ["--catalog", cat, "--chunk", "20"]
    assert run_predict(gz2_run, *args, "--out", ref) == 0
    real_write, written = ChunkedTable.write, []

    def write_then_stop(self, k, table, rejected):
        if written:
            raise KeyboardInterrupt  # Ctrl-C while the second chunk is being computed
        written.append(k)
        real_write(self, k, table, rejected)

    monkeypatch.setattr(ChunkedTable, "write", write_then_stop)
    capsys.readouterr()
    assert run_predict(gz2_run, *args, "--out", out) == 130
    assert "interrupted" in capsys.readouterr().err
    parts = tmp_path / "out.parquet.parts"
    assert sorted(p.name for p in parts.iterdir()) == [".lock", "chunk-000000.parquet", "settings.json"]
    assert not out.exists() and not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    # other settings over the unfinished output: refused, nothing touched
    assert run_predict(gz2_run, *args, "--out", out, "--batch-size", "8") == 2
    one_line_error(capsys, "other settings", "batch_size: 16 -> 8", str(parts))
    other = fake_run(tmp_path / "other", tree=GZ2, seed=1, **SMALL)  # the same config, other weights
    assert run_predict(gz2_run, *args, "--out", out, "--checkpoint", other / "checkpoints" / "best.pt") == 2
    one_line_error(capsys, "other settings", "checkpoint: ")
    assert sorted(p.name for p in parts.iterdir()) == [".lock", "chunk-000000.parquet", "settings.json"]
    monkeypatch.setattr(ChunkedTable, "write", real_write)
    assert run_predict(gz2_run, *args, "--out", out) == 0
    assert "1 of 3 chunk(s) already done" in capsys.readouterr().out
    assert pd.read_parquet(out).equals(pd.read_parquet(ref)) and not parts.exists()
    assert pq.read_schema(out).metadata == pq.read_schema(ref).metadata
    # a finished output of predict is replaced by predict (and only by it)
    assert run_predict(gz2_run, *args, "--out", out) == 0 and pd.read_parquet(out).equals(pd.read_parquet(ref))


def test_a_finished_output_is_replaced_by_a_run_with_other_settings(gz2_run, small_images, tmp_path):
    """A finished output is predict's own: a new command with other settings replaces it (no parts linger)."""
    cat = many_rows(small_images[0].parent / "cat30.parquet", small_images, 30)
    out = tmp_path / "o.csv"
    assert run_predict(gz2_run, "--catalog", cat, "--out", out) == 0
    first = out.read_text()
    assert run_predict(gz2_run, "--catalog", cat, "--out", out, "--chunk", "7") == 0
    assert out.read_text() == first and not (tmp_path / "o.csv.parts").exists()


def test_empty_folders_and_missing_catalogues_are_one_line(gz2_run, tmp_path, capsys):
    assert run_predict(gz2_run, "--catalog", tmp_path / "nope.csv", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "nope.csv", "file not found")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert run_predict(gz2_run, "--catalog", tmp_path / "bad.csv", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "no column 'dr7objid'", "--id-column")
    (tmp_path / "empty.csv").write_text("dr7objid,file_loc\n")
    assert run_predict(gz2_run, "--catalog", tmp_path / "empty.csv", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "no rows")
    (tmp_path / "bin.parquet").write_bytes(b"PAR1" + os.urandom(64))
    assert run_predict(gz2_run, "--catalog", tmp_path / "bin.parquet", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "not a readable Parquet table")
    pd.DataFrame({"dr7objid": [5.877e17], "file_loc": ["a.jpg"]}).to_parquet(tmp_path / "float.parquet")
    assert run_predict(gz2_run, "--catalog", tmp_path / "float.parquet", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "floating-point numbers, which lose digits")
    (tmp_path / "latin1.csv").write_bytes("dr7objid,file_loc\n1,caf\xe9.jpg\n".encode("latin-1"))
    assert run_predict(gz2_run, "--catalog", tmp_path / "latin1.csv", "--out", tmp_path / "o.csv") == 2
    one_line_error(capsys, "not a readable CSV table")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.parts").exists()


# --- at catalogue scale: kill -9, memory, several processes (subprocesses) --------------------------

def predict_command(run, cat, out, *extra) -> list[str]:
    return [sys.executable, "-m", "gzfast.predict", "--run", str(run), "--catalog", str(cat), "--out", str(out),
            "--tta", "1", "--workers", "1", "--batch-size", "64", *extra]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def peak_rss_mib(cmd) -> float:
    """Runs `cmd` to its end; its peak resident memory (getrusage of that child, through wait4)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_20k_row_catalogue_killed_mid_way_ends_as_an_uninterrupted_run_in_bounded_memory(small_images, tmp_path):
    """20,000 rows predicted to Parquet in chunks of 2,000: `kill -9` after a few chunks and the same command
    again give the uninterrupted run's table (same ids, same values), and the peak memory of a 20k-row run
    is within 15 % (+ 20 MiB) of a 5k-row one."""
    run = fake_run(tmp_path / "run", tree=GZ2, **{**SMALL, "model": "test_convnext"})  # timm's tiny ConvNeXt
    folder = small_images[0].parent
    big, small = many_rows(folder / "cat20k.parquet", small_images, 20_000), many_rows(folder / "cat5k.parquet",
                                                                                   small_images, 5_000)
    ref, out = tmp_path / "ref.parquet", tmp_path / "out.parquet"
    rss_5k = peak_rss_mib(predict_command(run, small, tmp_path / "5k.parquet", "--chunk", "2000"))
    rss_20k = peak_rss_mib(predict_command(run, big, ref, "--chunk", "2000"))
    assert rss_20k <= 1.15 * rss_5k + 20, (rss_5k, rss_20k)
    proc = subprocess.Popen(predict_command(run, big, out, "--chunk", "2000"), cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "out.parquet.parts"
    deadline = time.time() + 300
    while len(list(parts.glob("chunk-*.parquet"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("chunk-*.parquet")))
    assert 3 <= done < 10 and not out.exists(), done
    res = subprocess.run(predict_command(run, big, out, "--chunk", "2000"), cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{done} of 10 chunk(s) already done" in res.stdout
    a, b = pd.read_parquet(out), pd.read_parquet(ref)
    assert len(a) == 20_000 and a["dr7objid"].is_unique and a.equals(b)
    assert not parts.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_two_processes_predict_their_share_of_the_chunks_and_write_one_process_s_table(gz2_run, small_images, tmp_path):
    cat = many_rows(small_images[0].parent / "cat300.parquet", small_images, 300)
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    # the same batches as the two processes' (a batch of another size may round differently in the last bit)
    assert run_predict(gz2_run, "--catalog", cat, "--out", one, "--chunk", "64", "--batch-size", "64") == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "gzfast.predict"]
    res = subprocess.run([*launch, *predict_command(gz2_run, cat, two, "--chunk", "64")[3:]], cwd=REPO,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1 and "300 galaxies x 1 view(s)" in res.stdout  # both ranks' share counted
    assert pd.read_parquet(two).equals(pd.read_parquet(one))


# --- evaluate, for any tree ---------------------------------------------------------------------------

def test_evaluate_reports_the_tree_s_questions_and_a_dirichlet_run_s_nll(gz2_set, tmp_path, capsys):
    """Per question and per answer under the tree's own names and texts; the RMSE on cumulative fractions
    and the per-question NLL agree with what predict's table and the val shards' counts give by hand."""
    from gzfast import evaluate as evaluate_mod
    from gzfast.losses import dirichlet_multinomial_nll
    from gzfast.metrics import rmse

    shards = gz2_set / "shards"
    data = PackedSet.open(shards)
    run = fake_run(tmp_path / "d", head="dirichlet", tree=GZ2, has_counts=True, fingerprint=data.fingerprint,
                   shards=str(shards), **SMALL)
    assert evaluate_mod.main(["--run", str(run), "--tta", "2", "--loader", "pil", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((run / "eval.json").read_text())
    assert rep["tree"] == "gz2" and list(rep["per_question"]) == [q.name for q in GZ2.questions]
    assert rep["per_question"]["t02_edgeon"]["text"] == "edge-on disk?" and list(rep["per_answer"]) == list(GZ2.columns)
    assert "t01_smooth_or_features smooth / features or disk / star or artifact" in printed and "NLL" in printed
    assert run_predict(run, "--shards", shards, "--split", "val", "--out", tmp_path / "v.parquet", "--tta", "2") == 0
    table = pd.read_parquet(tmp_path / "v.parquet").set_index("dr7objid")
    loader = make_loader("pil", data.paths("val"), train=False, batch_size=8, image_size=32, crop_size=44, workers=0,
                         source_side=64, label_count=GZ2.n, has_counts=True)
    batches = list(loader)
    ids = torch.cat([b.ids for b in batches]).tolist()
    labels, counts = (torch.cat([getattr(b, k) for b in batches]) for k in ("labels", "counts"))
    conc = torch.tensor(table.loc[ids, [f"{c}_concentration" for c in GZ2.columns]].to_numpy())
    nll = dirichlet_multinomial_nll(conc, counts, GZ2).mean(dim=0)
    for q, value in zip(GZ2.questions, nll.tolist()):
        assert rep["per_question"][q.name]["nll"] == pytest.approx(value, rel=1e-4, abs=1e-4), q.name
    cumulative = GZ2.cumulative_from_per_question(table.loc[ids, [f"{c}_fraction" for c in GZ2.columns]].to_numpy())
    assert rep["rmse"]["model"] == pytest.approx(rmse(cumulative, labels.numpy()), abs=1e-6)
    assert rep["galaxies"] == data.samples("val") == len(ids)
