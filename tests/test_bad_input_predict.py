"""Bad input to predict, embed and evaluate, as tables per class: each case ends in exactly one line
`prog: error: ...` and exit 2 (never a traceback), and every file that existed before is byte-identical
after. Classes: an output never replaces a file the command did not write; the checkpoint and the shards
are checked against the run; settings that cannot be allocated; Ctrl-C; a damaged packed set. Also: one id
parser for file names, and images that are not regular files."""
import errno
import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fake_runs import fake_run
from PIL import Image

from gzfast import embed as embed_mod
from gzfast import evaluate as evaluate_mod
from gzfast import predict as predict_mod
from gzfast import tta
from shard_tools.layout import PackedSet, index_path
from shard_tools.schema import CSV_HEADER

MAINS = {"predict": predict_mod.main, "embed": embed_mod.main, "evaluate": evaluate_mod.main}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Ctx:
    tmp: Path
    run: Path        # a gz2-kaggle run (random convnext_atto, 32 px) trained, by its checkpoint, on `shards`
    shards: Path     # a copy of the synthetic packed set (train, val, test)
    images: Path     # 3 real GZ2 test JPEGs

    @property
    def out(self) -> Path:
        return self.tmp / "out.csv"


@pytest.fixture
def ctx(synth_shards, gz2_dir, tmp_path) -> Ctx:
    shards = tmp_path / "shards"
    shutil.copytree(synth_shards, shards)
    run = fake_run(tmp_path / "run", shards=str(shards), fingerprint=PackedSet.open(shards).fingerprint,
                   batch_size=8)
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((gz2_dir / "test_images").glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    return Ctx(tmp_path, run, shards, images)


def text(path: Path, content: str = "mine, not gzfast's\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def images_to(c: Ctx, out) -> list[str]:
    return ["--images", str(c.images), "--out", str(out)]


def foreign_parquet(path: Path, command: str | None = None) -> Path:
    meta = {b"gzfast": json.dumps({"command": command}).encode()} if command else None
    pq.write_table(pa.table({"GalaxyID": [1, 2]}).replace_schema_metadata(meta), path)
    return path


def png(path: Path) -> Path:
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    return path


def other_run(c: Ctx, **settings) -> Path:
    return fake_run(c.tmp / "other", shards=str(c.shards), seed=1, batch_size=8, **settings)


def edit_config(c: Ctx, **changes) -> list[str]:
    path = c.run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return images_to(c, c.out)


def repacked(c: Ctx) -> Path:
    """The same shards with another input fingerprint in the manifest: what a re-pack of changed input gives."""
    other = c.tmp / "repacked"
    shutil.copytree(c.shards, other)
    m = json.loads((other / "manifest.json").read_text())
    m["input_fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    return other


def gz2_catalogue_set(c: Ctx) -> Path:
    from shard_tools.pack import PackOptions, pack_catalog
    from shard_tools.synth_catalogs import write_catalog
    from shard_tools.trees import builtin_tree
    from shard_tools.user_catalog import CatalogSpec
    write_catalog(c.tmp / "cat", "gz2", 6, 0, 1, False)
    pack_catalog(CatalogSpec(c.tmp / "cat" / "catalog.csv", c.tmp / "cat" / "images", builtin_tree("gz2"), side=64),
                 c.tmp / "gz2shards", PackOptions(val_fraction=0.0), workers=1, progress=False)
    return c.tmp / "gz2shards"


def absurd_checkpoint(c: Ctx, **changes) -> list[str]:
    """A checkpoint (and config.json) saying the model runs at an image size nobody can allocate."""
    path = c.run / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=False)
    state["config"].update(changes)
    torch.save(state, path)
    (c.run / "config.json").write_text(json.dumps(state["config"]))
    return []


def first_train_shard(c: Ctx) -> Path:
    return c.shards / PackedSet.open(c.shards).select("train")[0].relpath


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# (case id, command, setup(ctx) -> arguments after --run RUN, expected part of the one line)
OUTPUTS = [
    ("out-is-the-run-config", "predict", lambda c: images_to(c, c.run / "config.json"), "the run's own file (config.json"),
    ("out-is-a-checkpoint", "predict", lambda c: images_to(c, c.run / "checkpoints" / "best.pt"), "the run's own file"),
    ("out-is-the-run-metrics", "predict", lambda c: images_to(c, text(c.run / "metrics.jsonl", "{}\n")), "run's own file"),
    ("out-is-a-run-summary-to-come", "predict", lambda c: images_to(c, c.run / "summary.json"), "run's own file"),
    ("out-is-evaluates-report", "predict", lambda c: images_to(c, text(c.run / "eval.json", "{}")), "run's own file"),
    ("out-is-a-folder", "predict", lambda c: images_to(c, c.tmp), "is a folder"),
    ("out-under-a-file", "predict", lambda c: images_to(c, text(c.tmp / "f.txt") / "sub.csv"), "f.txt is a file"),
    ("out-inside-the-image-folder", "predict", lambda c: images_to(c, c.images / "new.csv"), "inside an input"),
    ("out-is-the-catalogue", "predict", lambda c: ["--catalog", str(text(c.tmp / "c.csv", "GalaxyID\n1\n")), "--out",
                                                   str(c.tmp / "c.csv")], "an input of this command"),
    ("out-is-a-shard", "predict", lambda c: ["--shards", str(c.shards / "test"), "--out",
                                             str(next((c.shards / "test").glob("*.tar")))], "an input of this command"),
    ("out-is-a-foreign-csv", "predict", lambda c: images_to(c, text(c.tmp / "notes.csv", "a,b\n1,2\n")),
     "was not written by predict"),
    ("out-is-a-foreign-parquet", "predict", lambda c: images_to(c, foreign_parquet(c.tmp / "t.parquet")),
     "was not written by predict"),
    ("out-is-an-embedding", "predict", lambda c: images_to(c, foreign_parquet(c.tmp / "e.parquet", "embed")),
     "was not written by predict"),
    ("out-is-a-link", "predict", lambda c: (os.symlink(text(c.tmp / "target.csv"), c.tmp / "link.csv"),
                                             images_to(c, c.tmp / "link.csv"))[1], "not a plain file"),
    ("rejects-list-is-foreign", "predict", lambda c: (text(c.tmp / "out.rejected.csv", "x,y\n"), images_to(c, c.out))[1],
     "rejected-files list"),
    ("rejects-list-is-shared", "predict", lambda c: (text(c.tmp / "out", ",".join(CSV_HEADER) + "\n"),
                                                    images_to(c, c.out))[1], "would share the rejected-files list"),
    ("parts-folder-is-foreign", "predict", lambda c: (text(c.tmp / "out.csv.parts" / "todo.txt"), images_to(c, c.out))[1],
     "was not written by predict"),
    ("embed-out-is-a-prediction", "embed", lambda c: images_to(c, text(c.tmp / "p.csv", "GalaxyID,a_fraction\n")),
     "was not written by embed"),
    ("embed-out-is-the-run-config", "embed", lambda c: images_to(c, c.run / "config.json"), "run's own file"),
    ("eval-json-is-foreign", "evaluate", lambda c: text(c.run / "eval.json", '{"mine": 1}') and [],
     "was not written by evaluate"),
    ("eval-png-is-foreign", "evaluate", lambda c: png(c.run / "eval.png") and [], "was not written by evaluate"),
]

CHECKS = [
    ("checkpoint-of-a-48px-run", "predict", lambda c: ["--checkpoint", str(other_run(c, image_size=48) / "checkpoints" /
                                                                          "best.pt"), *images_to(c, c.out)],
     "image_size: 48 in the checkpoint, 32 in config.json"),
    ("checkpoint-of-another-model", "predict", lambda c: ["--checkpoint", str(other_run(c, model="resnet10t") /
                                                                             "checkpoints" / "best.pt"),
                                                         *images_to(c, c.out)], "another model"),
    ("edited-config-json", "predict", lambda c: edit_config(c, crop_size=100), "config differs"),
    ("evaluate-edited-config-json", "evaluate", lambda c: edit_config(c, image_size=48)[:0], "--force"),
    ("evaluate-other-shards", "evaluate", lambda c: ["--shards", str(repacked(c))], "not the shards"),
    ("predict-shards-of-another-tree", "predict", lambda c: ["--shards", str(gz2_catalogue_set(c)), "--split", "train",
                                                             "--out", str(c.out)], "packed for the gz2 tree"),
    ("evaluate-shards-of-another-tree", "evaluate", lambda c: ["--shards", str(gz2_catalogue_set(c)), "--force"],
     "packed for the gz2 tree"),
    ("split-without-shards", "predict", lambda c: ["--split", "val", *images_to(c, c.out)], "--split goes with"),
    ("no-source", "predict", lambda c: ["--out", str(c.out)], "give what to read"),
    ("chunk-zero", "predict", lambda c: ["--chunk", "0", *images_to(c, c.out)], "--chunk 0"),
]

ALLOCATION = [
    ("batch-of-10-12", "predict", lambda c: ["--batch-size", str(10**12), *images_to(c, c.out)], "--batch-size 1000000000000"),
    ("embed-batch-of-10-12", "embed", lambda c: ["--batch-size", str(10**12), *images_to(c, c.out)], "lower --batch-size"),
    ("evaluate-batch-of-10-12", "evaluate", lambda c: ["--batch-size", str(10**12)], "GiB"),
    ("absurd-image-size", "predict", lambda c: absurd_checkpoint(c, image_size=10**6) + images_to(c, c.out),
     "image_size 1000000"),
]

DAMAGED = [
    ("eval-train-shard-truncated", "evaluate", lambda c: truncate(first_train_shard(c), 3000) or [],
     "bytes, the manifest says"),
    ("eval-train-shard-missing", "evaluate", lambda c: first_train_shard(c).unlink() or [], "cannot read"),
    ("eval-index-garbled", "evaluate", lambda c: text(Path(index_path(first_train_shard(c))), "v1.2 x\n") and [],
     "not a DALI webdataset index"),
    ("eval-manifest-garbled", "evaluate", lambda c: text(c.shards / "manifest.json", "{") and [], "unreadable manifest"),
    ("predict-test-index-truncated", "predict", lambda c: (truncate(Path(index_path(next((c.shards / "test").glob("*.tar")))),
                                                                    40), ["--shards", str(c.shards / "test"), "--out",
                                                                          str(c.out)])[1], "problem(s) in the test shards"),
    ("predict-loose-tar-without-index", "predict", lambda c: (text(c.tmp / "loose" / "a.tar", "x"),
                                                              ["--shards", str(c.tmp / "loose"), "--out", str(c.out)])[1],
     "missing"),
]


def check_one_line(prog: str, capsys, message: str, case: str):
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and message in err[0], (case, err)
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("case, prog, setup, message", OUTPUTS + CHECKS + ALLOCATION + DAMAGED,
                         ids=[c[0] for c in OUTPUTS + CHECKS + ALLOCATION + DAMAGED])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, prog, setup, message, ctx, capsys):
    extra = setup(ctx)
    before = snapshot(ctx.tmp)
    args = ["--run", str(ctx.run), *extra, "--tta", "1", "--workers", "1"]
    if prog == "evaluate":
        args += ["--loader", "pil"]
    assert MAINS[prog](args) == 2
    check_one_line(prog, capsys, message, case)
    after = snapshot(ctx.tmp)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before was changed"
    assert not [k for k in after if ".tmp" in Path(k).name], "a temp file was left"


# --- the same checks, forced -------------------------------------------------------------------------

def test_force_uses_the_checkpoint_s_own_config_and_evaluates_other_shards(ctx, capsys):
    edit_config(ctx, crop_size=100)
    assert predict_mod.main(["--run", str(ctx.run), *images_to(ctx, ctx.out), "--tta", "1", "--force"]) == 0
    assert "from a 128 px crop" in capsys.readouterr().out  # the checkpoint's, not config.json's 100
    (ctx.run / "config.json").write_text(json.dumps(torch.load(ctx.run / "checkpoints" / "best.pt",
                                                               weights_only=False)["config"]))
    assert evaluate_mod.main(["--run", str(ctx.run), "--shards", str(repacked(ctx)), "--tta", "1", "--no-plot",
                              "--force", "--loader", "pil"]) == 0
    assert json.loads((ctx.run / "eval.json").read_text())["shards"].endswith("repacked")


@pytest.mark.slow
def test_evaluate_replaces_its_own_report_and_figure(ctx, capsys):
    args = ["--run", str(ctx.run), "--tta", "1", "--loader", "pil"]
    assert evaluate_mod.main(args) == 0 and evaluate_mod.main(args) == 0
    assert json.loads((ctx.run / "eval.json").read_text())["command"] == "evaluate"
    assert Image.open(ctx.run / "eval.png").info["Description"] == "gzfast evaluate"


# --- Ctrl-C, memory, a full disk ------------------------------------------------------------------

def raising(exc):
    def views(*a, **k):
        raise exc
    return views


@pytest.mark.parametrize("prog, exc, code, message", [
    ("predict", KeyboardInterrupt(), 130, "interrupted"),
    ("evaluate", KeyboardInterrupt(), 130, "interrupted"),
    ("embed", RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"), 2,
     "out of memory"),
    ("predict", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2, "out of GPU memory"),
])
def test_an_interrupted_or_out_of_memory_run_is_one_line_and_leaves_the_earlier_outputs(prog, exc, code, message, ctx,
                                                                                        monkeypatch, capsys):
    out = ctx.tmp / "earlier.csv"
    if prog != "evaluate":
        assert MAINS[prog](["--run", str(ctx.run), *images_to(ctx, out), "--tta", "1"]) == 0
    else:
        assert evaluate_mod.main(["--run", str(ctx.run), "--tta", "1", "--loader", "pil"]) == 0
    capsys.readouterr()
    before = snapshot(ctx.tmp)
    monkeypatch.setattr(tta, "predict_views", raising(exc))
    monkeypatch.setattr("gzfast.inference.predict_views", raising(exc))
    args = ["--run", str(ctx.run), "--tta", "1"] + (images_to(ctx, out) if prog != "evaluate" else ["--loader", "pil"])
    assert MAINS[prog](args) == code
    check_one_line(prog, capsys, message, prog)
    after = snapshot(ctx.tmp)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if ".tmp" in Path(k).name]


def test_a_full_disk_while_writing_the_output_is_one_line_naming_it(ctx, monkeypatch, capsys):
    out = ctx.tmp / "sub.parquet"
    real_open = open

    class FullDisk:
        """A file whose writes fail as on a full disk."""
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_disk_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return FullDisk(f) if "w" in mode and Path(file).name.startswith(".sub.parquet.tmp") else f

    monkeypatch.setattr("builtins.open", full_disk_open)
    assert predict_mod.main(["--run", str(ctx.run), *images_to(ctx, out), "--tta", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0], err
    assert not out.exists() and not [p for p in ctx.tmp.rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr("builtins.open", real_open)
    assert predict_mod.main(["--run", str(ctx.run), *images_to(ctx, out), "--tta", "1"]) == 0  # the parts were kept
    assert "1 of 1 chunk(s) already done" in capsys.readouterr().out and len(pd.read_parquet(out)) == 3


# --- ids from file names, and files that are not regular ------------------------------------------

def test_ids_from_file_names_follow_the_packer_s_rule(ctx, capsys):
    good = next(ctx.images.glob("*.jpg"))
    data = good.read_bytes()
    for name in ("-5.jpg", "+77.jpg", " 88.jpg", "1_000.jpg", "\u0663.jpg", "99999999999999999999.jpg", "0.jpg"):
        (ctx.images / name).write_bytes(data)
    assert predict_mod.main(["--run", str(ctx.run), *images_to(ctx, ctx.out), "--tta", "1"]) == 0
    ids = pd.read_csv(ctx.out)["GalaxyID"].tolist()
    assert ids == sorted(int(p.stem) for p in ctx.images.glob("*.jpg") if p.stem.isascii() and p.stem.isdigit()
                         and 0 < int(p.stem) < 2**63)
    rejected = pd.read_csv(ctx.tmp / "out.rejected.csv", dtype=str, keep_default_na=False).set_index("file")["reason"]
    assert len(rejected) == 7
    assert "does not fit in int64" in rejected["99999999999999999999.jpg"]
    for name in ("-5.jpg", "+77.jpg", " 88.jpg", "1_000.jpg", "\u0663.jpg", "0.jpg"):
        assert "not <GalaxyID>.jpg" in rejected[name], name
    assert "7 file(s) rejected" in capsys.readouterr().out


def test_a_fifo_among_the_images_is_rejected_by_its_type_and_never_read(ctx, capsys):
    os.mkfifo(ctx.images / "123.jpg")  # opening it for reading would block until a writer comes

    def blocked(signum, frame):
        raise AssertionError("predict blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(120)
    try:
        assert predict_mod.main(["--run", str(ctx.run), *images_to(ctx, ctx.out), "--tta", "1"]) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    rejected = pd.read_csv(ctx.tmp / "out.rejected.csv").set_index("file")["reason"]
    assert rejected["123.jpg"] == "not a regular file (a FIFO)" and len(pd.read_csv(ctx.out)) == 3


@pytest.mark.parametrize("prog, flags, message", [
    ("predict", ["--chunk", "0"], "--chunk 0"),
    ("embed", ["--split", "val"], "--split goes with"),
    ("predict", [], "give what to read"),
])
def test_source_flags_are_checked_before_the_model_is_loaded(prog, flags, message, tmp_path, capsys):
    # the run does not exist: had the model been loaded first, the error would name the run instead
    missing_run = tmp_path / "no-such-run"
    sources = [] if message == "give what to read" else ["--images", str(tmp_path)]
    assert MAINS[prog](["--run", str(missing_run), *sources, *flags, "--out", str(tmp_path / "o.csv")]) == 2
    check_one_line(prog, capsys, message, prog)
