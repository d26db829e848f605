"""Prediction and evaluation: a Kaggle submission from a run (shards or a folder of JPEGs), test-time
augmentation, the per-question/per-tier report, and the errors a user can run into."""
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import fake_run
from PIL import Image

from gzfast import embed as embed_mod
from gzfast import evaluate as evaluate_mod
from gzfast import predict as predict_mod
from gzfast.loaders.labels import read_labels
from gzfast.metrics import pooled_rmse, rmse
from gzfast.model import GZ2Model
from gzfast.train import main as train_main
from gzfast.tta import predict_views, view_params
from shard_tools import schema
from shard_tools.layout import PackedSet

from helpers import REPO

TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16",
        "--workers", "1", "--loader", "dali-cpu", "--log-every", "2", "--lr-backbone", "1e-3", "--lr-head", "1e-3"]


@pytest.fixture(scope="module")
def trained_run(synth_shards, tmp_path_factory) -> Path:
    """A real (tiny) training run: one epoch, so best.pt and last.pt exist as the trainer writes them."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_main(["--shards", str(synth_shards), "--out", str(run), *TINY, "--epochs", "1", "--no-plot"]) == 0
    return run


def read_submission(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = list(csv.reader(path.read_text().splitlines()))
    body = np.array(rows[1:], dtype=np.float64)
    return rows[0], body[:, 0].astype(np.int64), body[:, 1:]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(("predict: error: ", "evaluate: error: ")), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# --- test-time augmentation ---------------------------------------------------------------------------

def test_eight_views_make_the_prediction_invariant_to_right_angle_rotations():
    torch.manual_seed(0)
    model = GZ2Model("convnext_atto").eval()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    rotated = torch.rot90(x, 1, dims=(2, 3)).contiguous(memory_format=torch.channels_last)
    mirrored = torch.flip(x, dims=(3,)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        p8, p8_rot, p8_mir = (predict_views(model, t, 8) for t in (x, rotated, mirrored))
        p1, p1_rot = predict_views(model, x, 1), predict_views(model, rotated, 1)
        p4, p4_rot, p4_mir = (predict_views(model, t, 4) for t in (x, rotated, mirrored))
    assert torch.allclose(p8, p8_rot, atol=1e-5) and torch.allclose(p8, p8_mir, atol=1e-5)
    assert torch.allclose(p4, p4_rot, atol=1e-5)
    # the test can fail: a single view, or rotations alone against a mirror image, do see the difference
    assert (p1 - p1_rot).abs().max() > 1e-3 and (p4 - p4_mir).abs().max() > 1e-3
    assert torch.allclose(p1, model(x).float())
    assert len(set(view_params(8))) == 8 and view_params(1) == [(0, False)]
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        view_params(3)


# --- predict ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_submission_of_the_real_test_jpegs_from_shards_and_from_the_folder(trained_run, real_shards, gz2_dir,
                                                                           tmp_path, capsys):
    ids = sorted(int(p.stem) for p in (gz2_dir / "test_images").glob("*.jpg"))
    assert len(ids) == 146
    outs = {}
    for name, source in [("dali-cpu", ["--shards", str(real_shards / "test")]),
                         ("pil", ["--shards", str(real_shards / "test"), "--loader", "pil"]),
                         ("folder", ["--images", str(gz2_dir / "test_images")])]:
        out = tmp_path / f"{name}.csv"
        assert predict_mod.main(["--run", str(trained_run), *source, "--out", str(out), "--tta", "2"]) == 0
        printed = capsys.readouterr().out
        assert "galaxies/s" in printed and f"wrote {out}: 146 galaxies" in printed
        header, got_ids, values = read_submission(out)
        assert header == ["GalaxyID", *schema.COLUMNS] and len(header) == 38
        assert got_ids.tolist() == ids                      # exactly those ids, once each, sorted
        assert values.shape == (146, 37) and (values >= 0).all() and (values <= 1).all()
        assert len({tuple(r) for r in values}) > 100         # a prediction per image, not one row repeated
        outs[name] = values
        assert not out.with_suffix(".rejected.csv").exists()
    # the folder goes through the pil loader's eval transform: the same pixels as the packed images
    assert np.abs(outs["folder"] - outs["pil"]).max() < 2e-5
    # DALI's CPU decoder differs from PIL by a fraction of a grey level
    assert np.abs(outs["folder"] - outs["dali-cpu"]).max() < 5e-3


def test_tree_head_submission_obeys_the_decision_tree(real_shards, tmp_path):
    run = fake_run(tmp_path / "tree", head="tree")
    out = tmp_path / "tree.csv"
    assert predict_mod.main(["--run", str(run), "--shards", str(real_shards / "test"), "--out", str(out),
                             "--tta", "1", "--workers", "1", "--loader", "pil"]) == 0  # pil pads its last batch too
    _, ids, values = read_submission(out)
    assert len(ids) == 146 and schema.check_constraints(values, tol=2e-5).all()


def test_bad_files_in_an_image_folder_are_reported_and_skipped(tmp_path, gz2_dir, capsys):
    run = fake_run(tmp_path / "run")
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((gz2_dir / "test_images").glob("*.jpg"))[:3]
    for p in good:
        shutil.copy(p, folder / p.name)
    data = good[0].read_bytes()
    (folder / "500001.jpg").write_bytes(data[: len(data) // 2])             # truncated
    (folder / "galaxy.jpg").write_bytes(data)                              # no integer id
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (100, 100)).save(folder / "500002.jpg", format="JPEG")  # wrong size
    Image.new("RGB", (424, 424)).save(folder / "500003.jpg", format="PNG")   # a PNG named .jpg
    shutil.copy(good[1], folder / f"{good[1].stem}.jpeg")                  # the same id twice
    out = tmp_path / "sub.csv"
    assert predict_mod.main(["--run", str(run), "--images", str(folder), "--out", str(out), "--tta", "1"]) == 0
    captured = capsys.readouterr()
    _, ids, _ = read_submission(out)
    assert ids.tolist() == sorted(int(p.stem) for p in good)
    skipped = [line for line in captured.err.splitlines() if line.startswith("predict: skipped ")]
    assert len(skipped) == 6
    rejected = {r["file"]: r["reason"] for r in csv.DictReader(io.StringIO(out.with_suffix(".rejected.csv").read_text()))}
    pair = sorted([good[1].name, f"{good[1].stem}.jpeg"])  # files are read in name order: the second repeats
    assert set(rejected) == {"500001.jpg", "galaxy.jpg", "notes.txt", "500002.jpg", "500003.jpg", pair[1]}
    assert "cannot decode" in rejected["500001.jpg"] and "integer id" in rejected["galaxy.jpg"]
    assert "100x100" in rejected["500002.jpg"] and "not a JPEG (PNG)" in rejected["500003.jpg"]
    assert "repeats" in rejected[pair[1]]
    assert "6 file(s) rejected" in captured.out.strip().splitlines()[-1]


def test_predict_errors_are_one_clear_line(tmp_path, synth_shards, real_shards, capsys):
    run = fake_run(tmp_path / "run")
    out = str(tmp_path / "sub.csv")
    test = str(real_shards / "test")
    assert predict_mod.main(["--run", str(tmp_path / "nope"), "--shards", test, "--out", out]) == 2
    one_line_error(capsys, "no such run folder")
    # a checkpoint of another model: refused by name, whichever way it is given
    other = fake_run(tmp_path / "other", model="resnet10t")
    assert predict_mod.main(["--run", str(run), "--checkpoint", str(other / "checkpoints" / "best.pt"),
                             "--shards", test, "--out", out]) == 2
    one_line_error(capsys, "another model", "resnet10t")
    state = torch.load(other / "checkpoints" / "best.pt", weights_only=False)
    state["config"] = json.loads((run / "config.json").read_text())  # right name, wrong weights
    torch.save(state, tmp_path / "mislabelled.pt")
    assert predict_mod.main(["--run", str(run), "--checkpoint", str(tmp_path / "mislabelled.pt"),
                             "--shards", test, "--out", out]) == 2
    one_line_error(capsys, "do not fit", "convnext_atto")
    assert predict_mod.main(["--run", str(run), "--checkpoint", "last", "--shards", test, "--out", out]) == 2
    one_line_error(capsys, "no last checkpoint", "--checkpoint best")
    # shard folders without test shards
    assert predict_mod.main(["--run", str(run), "--shards", str(synth_shards / "val"), "--out", out]) == 2
    one_line_error(capsys, "no test shards", str(synth_shards / "test"))
    (tmp_path / "set").mkdir()  # a packed set without test images has no test/ folder at all
    shutil.copy(real_shards / "manifest.json", tmp_path / "set" / "manifest.json")
    assert predict_mod.main(["--run", str(run), "--shards", str(tmp_path / "set" / "test"), "--out", out]) == 2
    one_line_error(capsys, "no test shards", "packed without test images", "--images")
    (tmp_path / "empty").mkdir()
    assert predict_mod.main(["--run", str(run), "--shards", str(tmp_path / "empty"), "--out", out]) == 2
    one_line_error(capsys, "no test shards")
    assert predict_mod.main(["--run", str(run), "--shards", test, "--out", out, "--tta", "3"]) == 2
    one_line_error(capsys, "one of 1, 2, 4, 8")
    assert not Path(out).exists()


# --- evaluate -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_reports_recombining_figures_against_the_baselines(trained_run, synth_shards, capsys):
    assert evaluate_mod.main(["--run", str(trained_run), "--tta", "2"]) == 0
    printed = capsys.readouterr().out
    for title in ("per question", "per confidence tier", "per answer", "training mean", "all zeros"):
        assert title in printed
    rep = json.loads((trained_run / "eval.json").read_text())
    data = PackedSet.open(synth_shards)
    _, val = read_labels(data.paths("val"))
    _, train = read_labels(data.paths("train"))
    assert rep["galaxies"] == len(val) == data.samples("val") and rep["tta"] == 2
    # the baselines by hand, with the one RMSE
    assert rep["rmse"]["training mean"] == pytest.approx(rmse(np.broadcast_to(train.mean(0), val.shape), val), rel=1e-6)
    assert rep["rmse"]["all zeros"] == pytest.approx(np.sqrt(np.mean(val.astype(np.float64) ** 2)), rel=1e-9)
    overall = rep["rmse"]["model"]
    assert 0 < overall < rep["rmse"]["all zeros"]
    # per-tier and per-question figures recombine to the overall one, weighted by their counts
    tiers, questions = rep["per_tier"], rep["per_question"]
    assert sum(t["galaxies"] for t in tiers.values()) == len(val) and len(questions) == 11 and len(rep["per_answer"]) == 37
    assert pooled_rmse((t["model"], t["galaxies"]) for t in tiers.values()) == pytest.approx(overall, rel=1e-9)
    assert pooled_rmse((q["model"], len(q["answers"])) for q in questions.values()) == pytest.approx(overall, rel=1e-9)
    for key in ("from_tiers", "from_questions", "from_answers"):
        assert rep["recombined"][key] == pytest.approx(overall, rel=1e-9)
    png = trained_run / "eval.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_evaluate_needs_val_shards(tmp_path, real_shards, capsys):
    run = fake_run(tmp_path / "run", shards=str(real_shards))  # packed with val_fraction 0
    assert evaluate_mod.main(["--run", str(run)]) == 2
    one_line_error(capsys, "no val shards", "--val-fraction")


# --- the GPU figures (pytest -m gpu, part of make gpu-check) -------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
def test_gpu_inference_speed(real_shards, tmp_path, capsys):
    """The study's model (convnext_small, 224 px, batch 512), compiled bf16 fed by dali-gpu: single view
    >= 8,000 galaxies/s and 8-view TTA >= 1,000 galaxies/s on an H100/H200 (printed on any GPU)."""
    from gzfast.inference import Predictor, load_run
    from gzfast.loaders import make_loader

    run = fake_run(tmp_path / "small", model="convnext_small", image_size=224, crop_size=212, batch_size=512)
    paths = PackedSet.open(real_shards).paths("test") * 48  # 146 real JPEGs read 48 times: 7,008 galaxies a pass
    loaded = load_run(run, "best")
    name = torch.cuda.get_device_name()
    rates = {}
    for views in (1, 8):
        predictor = Predictor(loaded, views)
        assert predictor.precision == "bf16" and predictor.compiled
        loader = make_loader("dali-gpu", paths, train=False, batch_size=512, image_size=224, crop_size=212,
                             dtype=predictor.image_dtype, pad_last_batch=True)
        predictor.run(loader)                  # warm-up: compilation, the pipeline's start
        result = predictor.run(loader)
        assert len(result.ids) == 146 * 48 and np.isfinite(result.preds).all()
        rates[views] = len(result.ids) / result.seconds
    with capsys.disabled():  # the figure belongs in make gpu-check's output
        print(f"\n{name}: predict {rates[1]:,.0f} galaxies/s single view, {rates[8]:,.0f} galaxies/s with 8-view TTA")
    if "H100" in name or "H200" in name:
        assert rates[1] >= 8000 and rates[8] >= 1000, rates


def test_readme_commands_parse():
    """The README's commands for a trained model are the ones the parsers accept (the bracketed options dropped)."""
    from gzfast import export as export_mod
    text = (REPO / "README.md").read_text().split("## Using a trained model", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("    python -m gzfast.")]
    modules = {"gzfast.predict": predict_mod, "gzfast.evaluate": evaluate_mod, "gzfast.embed": embed_mod,
               "gzfast.export": export_mod}
    assert len(commands) >= 4 and {c.split()[2] for c in commands} == set(modules)
    for command in commands:
        words = re.sub(r"\[[^\]]*\]", "", command).split()
        args = modules[words[2]].build_parser().parse_args(words[3:])
        assert args.run == "RUN" and args.checkpoint in (None, "best")
        assert words[2] == "gzfast.export" or args.tta == 8 or "--tta" in words
