"""Bad input to the trainer and the benchmark, as a table: each case ends in one line `prog: error: ...`
and exit 2 (never a traceback), and every file that existed before is byte-identical after."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from gzfast.train import main
from shard_tools.layout import index_path

from helpers import REPO

TINY = ["--model", "convnext_atto", "--image-size", "32", "--crop-size", "128", "--batch-size", "16", "--epochs", "1",
        "--loader", "dali-cpu", "--no-plot", "--ceiling-probe", "0"]


def snapshot(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest_without(shards: Path, keep) -> None:
    path = shards / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"] = [s for s in m["shards"] if keep(s)]
    path.write_text(json.dumps(m))


def drop_index_lines(shards: Path, n: int, fix_manifest: bool) -> None:
    """The first train shard's index loses its last `n` samples (the header says so too)."""
    m = json.loads((shards / "manifest.json").read_text())
    shard = next(s for s in m["shards"] if s["split"] == "train")
    idx = shards / shard["index"]
    lines = idx.read_text().splitlines()
    version, count = lines[0].split()
    idx.write_text("\n".join([f"{version} {int(count) - n}", *lines[1:-n]]) + "\n")
    if fix_manifest:
        shard["samples"] -= n
        (shards / "manifest.json").write_text(json.dumps(m))


def text_file(path: Path, text="this is not what it should be\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def other_weights(tmp: Path) -> Path:
    path = tmp / "femto.pth"
    torch.save(timm.create_model("convnext_femto").state_dict(), path)
    return path


# (case id, setup(tmp, shards) -> extra args, expected part of the message)
CASES = [
    ("shards-missing", lambda t, s: ["--shards", str(t / "nowhere")], "no manifest"),
    ("shards-is-a-file", lambda t, s: ["--shards", str(text_file(t / "f.txt"))], "no manifest"),
    ("manifest-truncated", lambda t, s: (s / "manifest.json").write_text((s / "manifest.json").read_text()[:100]) and [],
     "unreadable manifest"),
    ("manifest-foreign", lambda t, s: (s / "manifest.json").write_text('{"hello": 1}') and [], "not a gzfast manifest"),
    ("config-missing", lambda t, s: ["--config", str(t / "none.yaml")], "file not found"),
    ("config-bad-yaml", lambda t, s: ["--config", str(text_file(t / "c.yaml", "model: [convnext\n"))], "not valid YAML"),
    ("config-bad-json", lambda t, s: ["--config", str(text_file(t / "c.json", "{model: 1"))], "not valid JSON"),
    ("config-not-a-mapping", lambda t, s: ["--config", str(text_file(t / "c.yaml", "- 1\n- 2\n"))], "expected a mapping"),
    ("config-unknown-key", lambda t, s: ["--config", str(text_file(t / "c.yaml", "modle: x\n"))], "unknown key"),
    ("config-wrong-type", lambda t, s: ["--config", str(text_file(t / "c.yaml", "epochs: many\n"))], "expected int"),
    ("unknown-model", lambda t, s: ["--model", "convnext_tinyy"], "not a timm model"),
    ("empty-curriculum", lambda t, s: ["--curriculum", ""], "empty schedule"),
    ("default-curriculum-too-few-epochs", lambda t, s: ["--curriculum", "--epochs", "2"], "at least 3 epochs"),
    ("schedule-unknown-tier", lambda t, s: ["--curriculum", "high:1,mid:1"], "unknown tier"),
    ("schedule-epochs-conflict", lambda t, s: ["--curriculum", "high:1,all:1", "--epochs", "3"], "conflicts"),
    ("schedule-empty-tier", lambda t, s: manifest_without(s, lambda x: x["tier"] != "medium") or
     ["--curriculum", "medium:1"], "selects no shards"),
    ("no-validation-shards", lambda t, s: manifest_without(s, lambda x: x["split"] != "val") or [], "no validation shards"),
    ("index-shorter-than-manifest", lambda t, s: drop_index_lines(s, 3, False) or [], "the manifest says"),
    ("index-shorter-than-tar", lambda t, s: drop_index_lines(s, 3, True) or [], "holds more after them"),
    ("index-missing", lambda t, s: Path(index_path(next(s.glob("train/*/*.tar")))).unlink() or [], "cannot read"),
    ("shard-missing", lambda t, s: next(s.glob("train/*/*.tar")).unlink() or [], "cannot read"),
    ("shard-truncated", lambda t, s: (lambda p: p.write_bytes(p.read_bytes()[:5000]) and None)(next(s.glob("val/*.tar"))) or [],
     "bytes, the manifest says"),
    ("out-is-a-file", lambda t, s: ["--out", str(text_file(t / "run.txt"))], "is a file"),
    ("out-holds-foreign-files", lambda t, s: text_file(t / "mine" / "config.json", '{"mine": true}') and
     ["--out", str(t / "mine")], "already holds files"),
    ("resume-nothing", lambda t, s: ["--resume", "--out", str(t / "empty")], "nothing to resume"),
    ("resume-a-foreign-folder", lambda t, s: text_file(t / "notes" / "todo.txt") and ["--resume", "--out", str(t / "notes")],
     "nothing to resume"),
    ("resume-text-checkpoint", lambda t, s: text_file(t / "r" / "checkpoints" / "last.pt") and
     ["--resume", "--out", str(t / "r")], "not a readable gzfast checkpoint"),
    ("force-without-resume", lambda t, s: ["--force"], "--force only"),
    ("pretrained-missing", lambda t, s: ["--pretrained", str(t / "w.pth")], "--pretrained"),
    ("pretrained-text", lambda t, s: ["--pretrained", str(text_file(t / "w.pth"))], "cannot use it"),
    ("pretrained-bad-safetensors", lambda t, s: ["--pretrained", str(text_file(t / "w.safetensors"))], "cannot use it"),
    ("pretrained-other-model", lambda t, s: ["--pretrained", str(other_weights(t))], "cannot use it"),
    ("freeze-a-model-without-stages", lambda t, s: ["--model", "resnet10t", "--freeze-stages", "2"], "no stem/stages"),
    ("image-size-zero", lambda t, s: ["--image-size", "0"], "image_size 0"),
    ("crop-too-large-to-rotate", lambda t, s: ["--crop-size", "380"], "blank corners"),
    ("crop-larger-than-image", lambda t, s: ["--crop-size", "500"], "crop_size 500"),
    ("zoom-out-of-range", lambda t, s: ["--zoom", "0.9"], "zoom must be"),
    ("unknown-loader", lambda t, s: ["--loader", "ffcv"], "loader 'ffcv'"),
    ("batch-not-divisible", lambda t, s: ["--grad-accum", "3"], "not divisible"),
    ("batch-size-zero", lambda t, s: ["--batch-size", "0"], "must be >= 1"),
    ("epochs-zero", lambda t, s: ["--epochs", "0"], "epochs must be >= 1"),
    ("precision-unknown", lambda t, s: ["--precision", "fp8"], "precision"),
    ("verify-shards-unknown", lambda t, s: ["--verify-shards", "always"], "quick or full"),
    ("seed-out-of-range", lambda t, s: ["--seed", str(2**32)], "seed 4294967296: must be in 0..4294967295"),
    ("seed-negative", lambda t, s: ["--seed", "-1"], "seed -1: must be in"),
    ("lr-nan", lambda t, s: ["--lr-backbone", "nan"], "lr_backbone nan: must be a finite number"),
    ("lr-negative", lambda t, s: ["--lr-head", "-0.1"], "lr_head -0.1: must be a finite number >= 0"),
    ("weight-decay-infinite", lambda t, s: ["--weight-decay", "inf"], "weight_decay inf: must be a finite number"),
    ("config-lr-nan", lambda t, s: ["--config", str(text_file(t / "c.yaml", "lr_backbone: .nan\n"))],
     "lr_backbone nan: must be a finite number"),
    ("batchnorm-micro-batch-of-one", lambda t, s: ["--model", "resnet10t", "--batch-size", "1"], "BatchNorm"),
    ("grad-accum-leaves-no-step", lambda t, s: ["--batch-size", "256", "--grad-accum", "2", "--curriculum", "high:1"],
     "no optimizer step"),
    ("loss-unknown", lambda t, s: ["--loss", "huber"], "loss 'huber'"),
    ("dirichlet-without-counts", lambda t, s: ["--loss", "dirichlet"], "packed from fractions only"),
    ("head-does-not-fit-the-loss", lambda t, s: ["--loss", "dirichlet", "--head", "tree"], "with --loss dirichlet"),
    ("out-under-a-file", lambda t, s: ["--out", str(text_file(t / "f.txt") / "run")], "is a file"),
    ("out-locked-by-another-trainer", lambda t, s: ["--out", str(held_lock(t / "out-busy"))], "another trainer is writing"),
]

HELD = []  # open lock files, held for the rest of the session like a running trainer holds its own


def held_lock(run: Path) -> Path:
    """`run` with RUN/.lock held (flock), as a trainer writing that run holds it."""
    import fcntl
    run.mkdir(parents=True)
    f = open(run / ".lock", "w")
    f.write("4242\n")
    f.flush()
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD.append(f)
    return run


@pytest.mark.parametrize("case, setup, message", CASES, ids=[c[0] for c in CASES])
def test_bad_trainer_input_is_one_line_exit_2_and_touches_nothing(case, setup, message, synth_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(synth_shards, shards)
    extra = setup(tmp_path, shards) or []
    before = snapshot(tmp_path)
    args = ["--shards", str(shards), "--out", str(tmp_path / "run"), *TINY, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: ") and message in err[0], err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before was changed"
    assert not (tmp_path / "run").exists() or case.startswith("out-")


def test_run_control_flags_are_not_part_of_the_saved_config():
    from gzfast.config import RUN_CONTROL, TrainConfig
    saved = TrainConfig(resume=True, force=True, plot=False).resolve(False).to_dict()
    assert not RUN_CONTROL & set(saved) and {"resume", "force"} <= RUN_CONTROL


@pytest.mark.parametrize("args, message", [
    (["--shards", "/nowhere/at/all"], "no manifest"),
    (["--loaders", "ffcv"], "unknown loader"),
    (["--config", "/nowhere.yaml"], "file not found"),
])
@pytest.mark.slow
def test_bad_benchmark_input_is_one_line(args, message, synth_shards):
    full = args if "--shards" in args else ["--shards", str(synth_shards), *args]
    res = subprocess.run([sys.executable, "benchmarks/epoch_time.py", "--quick", *full], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert err[-1].startswith("epoch_time: error: ") and message in err[-1], res.stderr


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(synth_shards, tmp_path,
                                                                                         monkeypatch, capsys):
    """The second epoch's checkpoint write fails with ENOSPC: one line naming the file and the cause, no temp
    file left, and last.pt still the first epoch's."""
    import errno

    from gzfast import checkpoint as ckpt
    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(f)
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            Path(f).write_bytes(b"partial")  # some bytes reached the disk before it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    args = ["--shards", str(synth_shards), "--out", str(run), *TINY, "--epochs", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: ") and "No space left on device" in err[0], err
    assert "last.pt" in err[0]
    assert ckpt.load(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
def test_a_second_ctrl_c_during_training_is_one_line_and_keeps_the_last_checkpoint(synth_shards, tmp_path, monkeypatch,
                                                                                   capsys):
    """The first Ctrl-C asks for a checkpoint at the next step; a second one stops at once: one line, exit 130,
    the last checkpoint as it was."""
    from gzfast import checkpoint as ckpt
    from gzfast import train as train_mod
    real_step, calls = train_mod.training_step, []

    def step(*args, **kw):
        calls.append(1)
        if len(calls) == 4:  # the first step of epoch 2 (3 batches of 96 an epoch): epoch 1's checkpoint exists
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(train_mod, "training_step", step)
    run = tmp_path / "run"
    args = ["--shards", str(synth_shards), "--out", str(run), *TINY, "--epochs", "2", "--batch-size", "96"]
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: interrupted") and "--resume" in err[0], err
    assert ckpt.load(run / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_two_trainers_started_together_into_one_new_folder_cannot_both_run(synth_shards, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "gzfast/train.py", "--shards", str(synth_shards), "--out", str(run), *TINY, "--epochs", "2"]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("another trainer is writing" in refused[0] or "already holds" in refused[0]), refused
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
