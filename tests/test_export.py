"""`gzfast.export`: a run as a folder that plain timm loads (same logits, and the card's head gives the same
outputs), its model card with the run's recorded figures, ONNX checked against PyTorch, `load_model_dir` giving
what `load_run` gives, fine-tuning from an export, and the inputs it refuses (one line, nothing touched)."""
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from gzfast import onnx_export
from gzfast.export import main as export_main
from gzfast.export_layout import ModelDirError
from gzfast.inference import load_run
from gzfast.loaders.folder import eval_spec
from gzfast.loaders.pil import pil_transform
from gzfast.model import GZ2Model
from gzfast.model_dir import load_model_dir
from gzfast.train import main as train_main
from shard_tools import schema

TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16", "--loader", "pil",
        "--workers", "0", "--log-every", "2", "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--ceiling-probe", "0",
        "--no-plot"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tree_run(synth_shards, tmp_path_factory) -> Path:
    """A real tiny run (convnext_atto, tree head, one epoch) as the trainer leaves it."""
    run = tmp_path_factory.mktemp("runs") / "tree"
    assert train_main(["--shards", str(synth_shards), "--out", str(run), *TINY, "--head", "tree", "--epochs", "1"]) == 0
    return run


@pytest.fixture(scope="module")
def exported(tree_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "gz2-atto"
    assert export_main(["--run", str(tree_run), "--out", str(out)]) == 0
    return out


def linked_copy(run: Path, dest: Path) -> Path:
    """The run's folder with its files hard-linked (cheap; the tests replace files, never write into them)."""
    shutil.copytree(run, dest, copy_function=os.link)
    return dest


def variant_run(run: Path, dest: Path, model: str, head: str) -> Path:
    """The real run's records with another model and head, and untrained weights of that model."""
    linked_copy(run, dest)
    config = json.loads((run / "config.json").read_text())
    (dest / "config.json").unlink()
    (dest / "config.json").write_text(json.dumps({**config, "model": model, "head": head}))
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    torch.manual_seed(5)
    state.update(config={**state["config"], "model": model, "head": head}, model=GZ2Model(model, head).state_dict())
    state.pop("optimizer")
    for name in ("best.pt", "last.pt"):
        (dest / "checkpoints" / name).unlink()
        torch.save(state, dest / "checkpoints" / name)
    return dest


def batch(n=4, size=32) -> torch.Tensor:
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last)


def card_code(folder: Path) -> str:
    """The python block of the folder's model card."""
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)


def run_card_code(folder: Path, monkeypatch) -> dict:
    """Runs the card's code as a user would, from the folder's parent; returns its names."""
    monkeypatch.chdir(folder.parent)
    names: dict = {}
    exec(compile(card_code(folder), "README.md", "exec"), names)  # noqa: S102 - the card's own example
    return names


@pytest.mark.slow
def test_plain_timm_loads_the_export_and_gives_the_runs_logits_and_outputs(tree_run, exported, monkeypatch):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "convnext_atto" and config["num_classes"] == 37
    assert config["label_names"] == list(schema.COLUMNS)
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_pct"] == pytest.approx(128 / 424)
    assert pcfg["mean"] == [0.485, 0.456, 0.406] and pcfg["interpolation"] == "bilinear"
    gz = config["gzfast"]
    assert gz["head"] == "tree" and gz["tree"]["name"] == "gz2-kaggle" and gz["image"] == \
        {"source_side": 424, "crop_size": 128, "image_size": 32, "fit": None}
    assert gz["source"]["epoch"] == 1 and gz["source"]["checkpoint"] == "best.pt"

    run = load_run(tree_run, "best", CPU)
    x = batch()
    with torch.no_grad():
        want_logits, want = run.model.backbone(x), run.model(x)
        by_dir = timm.create_model(f"local-dir:{exported}", pretrained=True).eval().to(memory_format=torch.channels_last)
        by_file = timm.create_model("convnext_atto", pretrained=True, num_classes=37, pretrained_cfg_overlay=dict(
            file=str(exported / "model.safetensors"), num_classes=37)).eval().to(memory_format=torch.channels_last)
        assert torch.equal(by_dir(x), want_logits) and torch.equal(by_file(x), want_logits)
        card = run_card_code(exported, monkeypatch)  # the card's own loading code and its plain-torch head
        assert card["outputs"].shape == (1, 37)
        assert torch.allclose(card["head"](card["model"](x)), want, atol=1e-6, rtol=0)
        assert schema.check_constraints(card["head"](by_dir(x)).numpy(), tol=1e-5).all()

        loaded = load_model_dir(exported, CPU)
        assert torch.equal(loaded.model(x), want) and not loaded.model.training
        assert (loaded.cfg.model, loaded.cfg.head, loaded.cfg.image_size, loaded.cfg.crop_size) == ("convnext_atto", "tree", 32, 128)
        assert list(loaded.tree.columns) == list(schema.COLUMNS)
    assert (loaded.data.image_side, loaded.data.fit, loaded.epoch) == (424, None, 1)


def test_the_model_card_gives_the_runs_recorded_figures(tree_run, exported, synth_shards):
    card = (exported / "README.md").read_text()
    record = next(json.loads(l) for l in (tree_run / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in l)
    assert f"**RMSE {record['val_rmse']:.5f}**" in card
    for tier, value in record["val_per_tier"].items():
        assert f"| {tier} | {value:.5f} |" in card
    for question, value in record["val_per_question"].items():
        assert re.search(rf"\| {question} \| [^|]+ \| {value:.5f} \|", card), question
    summary = json.loads((tree_run / "summary.json").read_text())
    assert f"{summary['baseline_rmse']:.5f}" in card
    launch = json.loads((tree_run / "config.json").read_text())
    state = torch.load(tree_run / "checkpoints" / "best.pt", weights_only=False)
    assert launch["command"] in card and str(launch["commit"]) in card and state["data_fingerprint"] in card
    assert "**Synthetic data**" in card and "high:" not in card and "all:1 (no curriculum)" in card
    assert "`Class1.1`, `Class1.2`, `Class1.3`" in card and "| Q7 | how rounded (smooth) |" in card  # answers, texts


def test_the_card_gives_evaluates_figures_of_the_same_checkpoint_only(tree_run, tmp_path, capsys):
    from gzfast.evaluate import main as evaluate_main
    run = linked_copy(tree_run, tmp_path / "run")
    assert evaluate_main(["--run", str(run), "--tta", "1", "--loader", "pil", "--workers", "0", "--no-plot"]) == 0
    rep = json.loads((run / "eval.json").read_text())
    assert export_main(["--run", str(run), "--out", str(tmp_path / "best")]) == 0
    card = (tmp_path / "best" / "README.md").read_text()
    assert f"`gzfast.evaluate` on this checkpoint ({rep['galaxies']} validation galaxies, 1 view(s) averaged): " \
           f"RMSE {rep['rmse']['model']:.5f}" in card
    assert all(f"{t} {v['model']:.5f}" in card for t, v in rep["per_tier"].items())
    shutil.copy(run / "checkpoints" / "best.pt", tmp_path / "other.pt")  # same weights, another file: not eval.json's
    assert export_main(["--run", str(run), "--out", str(tmp_path / "other"), "--checkpoint", str(tmp_path / "other.pt")]) == 0
    assert "`gzfast.evaluate` on this checkpoint" not in (tmp_path / "other" / "README.md").read_text()


def test_the_cards_preprocessing_is_gzfasts_eval_geometry(exported, gz2_dir, monkeypatch):
    """On real GZ2 JPEGs the card's PIL `prepare` and gzfast's pil loader agree within ~1/255 (draft-mode decode)."""
    prepare = run_card_code(exported, monkeypatch)["prepare"]
    spec = eval_spec(1, 32, 128, "cpu", torch.float32, 0)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    diffs = []
    for path in sorted((gz2_dir / "test_images").glob("*.jpg"))[:8]:
        ours = torch.from_numpy(pil_transform(path.read_bytes(), 0, spec).astype(np.float32)).permute(2, 0, 1)
        theirs = (prepare(path) * std + mean) * 255
        diffs.append(float((theirs - ours).abs().mean()))
    assert max(diffs) < 2.0, diffs


@pytest.mark.slow
def test_onnx_matches_pytorch_and_a_plain_re_export_drops_it(tree_run, tmp_path):
    for package in onnx_export.PACKAGES:
        pytest.importorskip(package, reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    import onnxruntime as ort
    run = variant_run(tree_run, tmp_path / "resnet", "resnet10t", "tree")
    out = tmp_path / "export"
    assert export_main(["--run", str(run), "--out", str(out), "--onnx"]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = batch(6)
    got_outputs, got_logits = session.run(["outputs", "logits"], {"images": x.contiguous().numpy()})
    loaded = load_model_dir(out, CPU)
    with torch.no_grad():
        assert np.abs(got_outputs - loaded.model(x).numpy()).max() < 1e-3
        assert np.abs(got_logits - loaded.model.backbone(x).numpy()).max() < 1e-3
    gz = json.loads((out / "config.json").read_text())["gzfast"]
    assert gz["onnx_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert "## ONNX" in (out / "README.md").read_text()
    (out / "notes.txt").write_text("mine")  # a user's file in an export folder outlives a re-export
    assert export_main(["--run", str(run), "--out", str(out)]) == 0
    assert not (out / "model.onnx").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["gzfast"]["onnx_sha256"] is None


def test_a_dirichlet_export_gives_concentrations_and_fractions_in_plain_torch(tree_run, tmp_path, monkeypatch):
    run = variant_run(tree_run, tmp_path / "dirichlet", "resnet10t", "dirichlet")
    out = tmp_path / "export"
    assert export_main(["--run", str(run), "--out", str(out)]) == 0
    card = run_card_code(out, monkeypatch)
    model = load_model_dir(out, CPU).model
    x = batch()
    with torch.no_grad():
        concentrations = card["head"](card["model"](x))
        assert torch.allclose(concentrations, model(x), atol=1e-5, rtol=0)
        assert torch.allclose(card["fractions"](concentrations), model.fractions(model(x)), atol=1e-6, rtol=0)
    assert json.loads((out / "config.json").read_text())["gzfast"]["outputs"] == "concentrations"


@pytest.mark.slow
def test_fine_tuning_an_export_keeps_its_classifier(exported, synth_shards, tmp_path, capsys):
    from safetensors.torch import load_file
    run = tmp_path / "ft"
    assert train_main(["--shards", str(synth_shards), "--out", str(run), *TINY, "--head", "tree", "--epochs", "1",
                       "--pretrained", str(exported / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"loaded \d+ backbone tensors; kept its classifier \(an export of the same 37 answers, tree head\)", out)
    source = load_file(str(exported / "model.safetensors"))
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    for k, v in source.items():
        if k.startswith(("stem.", "stages.0.", "stages.1.")):  # frozen by default with --pretrained
            assert torch.equal(trained["backbone." + k], v), k


def test_load_model_dir_refuses_what_it_cannot_trust(exported, tmp_path):
    def copy(name):
        return Path(shutil.copytree(exported, tmp_path / name))

    edited = copy("edited")
    save_file({"x": torch.zeros(1)}, str(edited / "model.safetensors"))
    with pytest.raises(ModelDirError, match="sha256 differs"):
        load_model_dir(edited, CPU)
    renamed = copy("renamed")
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "architecture": "convnext_femto"}))
    with pytest.raises(ModelDirError, match="disagree"):
        load_model_dir(renamed, CPU)
    unfinished = copy("unfinished")
    (unfinished / "config.json").write_text(json.dumps({"gzfast": {**config["gzfast"], "complete": False}}))
    with pytest.raises(ModelDirError, match="did not finish"):
        load_model_dir(unfinished, CPU)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelDirError, match="no such file"):
        load_model_dir(tmp_path / "plain", CPU)
    with pytest.raises(ModelDirError, match="no such folder"):
        load_model_dir(tmp_path / "nowhere", CPU)


# --- bad input ------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def text(path: Path, content="not what it should be\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a hard link of the real run's file: replaced, never written into
    path.write_text(content)
    return path


def no_onnx(monkeypatch):
    real = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    return ["--onnx"]


# (case id, setup(tmp, run, monkeypatch) -> (run, extra args), expected part of the message)
CASES = [
    ("run-missing", lambda t, r, m: (t / "nowhere", []), "no such run folder"),
    ("run-without-checkpoints", lambda t, r, m: (text(t / "r" / "config.json", "{}").parent, []), "no best checkpoint"),
    ("checkpoint-path-missing", lambda t, r, m: (r, ["--checkpoint", str(t / "x.pt")]), "file not found"),
    ("checkpoint-not-a-checkpoint", lambda t, r, m: (r, ["--checkpoint", str(text(t / "x.pt"))]), "not a readable checkpoint"),
    ("run-without-metrics", lambda t, r, m: ((lambda c: (c / "metrics.jsonl").unlink() or c)(linked_copy(r, t / "c")), []),
     "no metrics log"),
    ("metrics-truncated", lambda t, r, m: ((lambda c: text(c / "metrics.jsonl", '{"kind": "epo') and c)(linked_copy(r, t / "c")), []),
     "not a JSON record"),
    ("out-is-a-file", lambda t, r, m: (r, ["--out", str(text(t / "model.txt"))]), "a file; give a new or empty folder"),
    ("out-under-a-file", lambda t, r, m: (r, ["--out", str(text(t / "f") / "export")]), "is a file, not a folder"),
    ("out-is-the-run", lambda t, r, m: (r, ["--out", str(r)]), "a training run's folder"),
    ("out-holds-a-users-files", lambda t, r, m: (r, ["--out", str(text(t / "mine" / "config.json", '{"a": 1}').parent)]),
     "holds files that export did not write"),
    ("onnx-packages-missing", lambda t, r, m: (r, no_onnx(m)), "pip install -e '.[onnx]'"),
]


@pytest.mark.parametrize("case, setup, message", CASES, ids=[c[0] for c in CASES])
def test_bad_export_input_is_one_line_exit_2_and_touches_nothing(case, setup, message, tree_run, tmp_path, monkeypatch, capsys):
    run, extra = setup(tmp_path, tree_run, monkeypatch)
    args = ["--run", str(run), "--out", str(tmp_path / "export"), *extra]
    before, run_before = snapshot(tmp_path), snapshot(tree_run)
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export: error: ") and message in err[0], err
    assert snapshot(tmp_path) == before and snapshot(tree_run) == run_before
    assert not (tmp_path / "export").exists()


def test_predict_embed_and_evaluate_take_the_export_in_place_of_the_run(tree_run, exported, synth_shards, tmp_path):
    """--model-dir DIR gives what --run RUN gives (the same weights, built as trained), for every command."""
    import pandas as pd

    from gzfast import embed, evaluate, predict
    common = ["--shards", str(synth_shards / "test"), "--tta", "2", "--loader", "pil"]
    for command in (predict, embed):
        by_run, by_dir = tmp_path / f"{command.__name__}-run.csv", tmp_path / f"{command.__name__}-dir.csv"
        assert command.main(["--run", str(tree_run), "--out", str(by_run), *common]) == 0
        assert command.main(["--model-dir", str(exported), "--out", str(by_dir), *common]) == 0
        a, b = pd.read_csv(by_run), pd.read_csv(by_dir)
        assert len(a) == 40 and a.columns.tolist() == b.columns.tolist() and np.allclose(a.to_numpy(), b.to_numpy())
    folder = linked_copy(exported, tmp_path / "export")  # evaluate writes its report beside the model
    assert evaluate.main(["--model-dir", str(folder), "--shards", str(synth_shards), "--tta", "1", "--no-plot",
                          "--loader", "pil"]) == 0
    report = json.loads((folder / "eval.json").read_text())
    assert report["rmse"]["model"] == pytest.approx(json.loads((tree_run / "summary.json").read_text())["final_val_rmse"],
                                                    rel=1e-5)
    assert predict.main(["--model-dir", str(exported), "--checkpoint", "last", "--out", str(tmp_path / "x.csv"),
                         *common]) == 2
