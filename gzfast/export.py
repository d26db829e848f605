"""`python -m gzfast.export --run RUN --out DIR [--checkpoint best|last|PATH] [--onnx]`: a trained run as a
model folder that plain timm loads (`timm.create_model("local-dir:DIR", pretrained=True)`), with its model card.

DIR gets `model.safetensors` (the backbone under timm's own names), `config.json` (timm's pretrained config plus
gzfast's fields: answers, head, tree, image geometry, the run's config), `README.md` (the model card, with the
run's recorded figures) and, with --onnx, `model.onnx` (checked against PyTorch with onnxruntime first); the
layout is `gzfast.export_layout`'s. --out must be a new or empty folder, or one that export wrote before;
every file is written atomically and config.json last, so a folder is trusted only once complete.
`gzfast.model_dir.load_model_dir(DIR)` reads it back for prediction.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from shard_tools.errors import UserError, run_command
from shard_tools.layout import LayoutError, PackedSet, is_remote, write_atomic

from . import checkpoint as ckpt
from . import onnx_export
from .data_facts import DataFacts
from .export_layout import CARD, CONFIG, FORMAT, ONNX, OWN_FILES, WEIGHTS, export_config, read_json
from .inference import LoadedRun, load_run
from .loaders import IMAGENET_MEAN, IMAGENET_STD
from .model_card import CardFacts, model_card
from .model_dir import sha256_of
from .run_records import read_epochs

PROG = "export"
OUTPUTS = {"sigmoid": "fractions", "tree": "fractions", "dirichlet": "concentrations"}
KEPT_TIMM_FIELDS = ("fixed_input_size", "first_conv", "classifier")  # of the architecture's own pretrained_cfg


class ExportError(UserError, ValueError):
    """A run or an --out that export cannot use; the message says what to give instead."""


def check_out(out: Path, run: Path) -> dict | None:
    """Refuses an --out that is not a new or empty folder or an earlier export; returns that export's config."""
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"--out {out}: {parent} is a file, not a folder; give a new folder for the export")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: a file; give a new or empty folder for the export")
    if not out.exists():
        return None
    if out.resolve() == run.resolve() or (out / "metrics.jsonl").exists() or (out / "checkpoints").is_dir():
        raise ExportError(f"--out {out}: a training run's folder; export writes a folder of its own, give a new one "
                          f"(e.g. {out / 'export'})")
    previous = export_config(out)
    entries = sorted(p.name for p in out.iterdir())
    if previous is None and entries:
        raise ExportError(f"--out {out}: holds files that export did not write (e.g. {entries[0]}) and no export "
                          f"{CONFIG}; give a new or empty folder")
    return previous


def data_origin(shards: str, fingerprint: str | None) -> str:
    """Words on where the training images came from: synthetic (shard_tools synth's marker in the packed set's
    input) or not, or why that is not known."""
    if is_remote(shards):
        return f"The packed set is on object storage ({shards}); whether its images are real or synthetic was not checked."
    try:
        data = PackedSet.open(shards)
    except LayoutError:
        return (f"The packed set `{shards}` could not be opened where this was exported, so whether its images are "
                f"real or synthetic is not known.")
    if not data.manifest.get("input"):
        return f"The packed set `{shards}` does not record its input, so whether its images are real or synthetic is not known."
    source = Path(str(data.manifest["input"]))
    changed = "" if data.fingerprint == fingerprint else \
        f" (the set at that path has changed since training: its fingerprint is now `{data.fingerprint}`)"
    if any((p / "synth.json").is_file() for p in (source, source.parent)):
        return (f"**Synthetic data**: the packed set was made from `shard_tools synth` output ({source}), so its "
                f"figures say nothing about real galaxies{changed}.")
    return f"Packed from `{source}` (not `shard_tools synth` output){changed}."


def same_evaluation(rep: dict | None, loaded: LoadedRun) -> dict | None:
    """eval.json when it evaluated the exported checkpoint (same file name and epoch), else None."""
    if rep and Path(str(rep.get("checkpoint", ""))).name == loaded.checkpoint.name and rep.get("checkpoint_epoch") == loaded.epoch:
        return rep
    return None


def timm_config(backbone: torch.nn.Module, cfg, facts: DataFacts) -> dict:
    """config.json's timm part: as timm's save_for_hf writes it, with the preprocessing gzfast trained with."""
    own = backbone.pretrained_cfg
    pretrained_cfg = {k: own[k] for k in KEPT_TIMM_FIELDS if k in own}
    pretrained_cfg.update(
        {"tag": "gzfast", "custom_load": False, "input_size": [3, cfg.image_size, cfg.image_size],
         "interpolation": "bilinear", "crop_pct": cfg.crop_size / facts.image_side, "crop_mode": "center",
         "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_classes": facts.tree.n,
         "description": f"gzfast: {facts.tree.name} vote fractions ({cfg.head} head over these logits; see README.md)"})
    return {"architecture": cfg.model, "num_classes": facts.tree.n, "num_features": backbone.num_features,
            "label_names": list(facts.tree.columns), "pretrained_cfg": pretrained_cfg}


def gzfast_fields(loaded: LoadedRun, facts: DataFacts, state: dict, launch: dict) -> dict:
    cfg = loaded.cfg
    return {"format": FORMAT, "complete": True, "head": cfg.head, "outputs": OUTPUTS[cfg.head],
            "tree": facts.tree.to_dict(), "has_counts": facts.has_counts,
            "image": {"source_side": facts.image_side, "crop_size": cfg.crop_size, "image_size": cfg.image_size,
                      "fit": facts.fit},
            "train_config": cfg.to_dict(),
            "source": {"run": str(loaded.run.resolve()), "checkpoint": loaded.checkpoint.name, "epoch": loaded.epoch,
                       "data_fingerprint": state.get("data_fingerprint"), "command": launch.get("command"),
                       "commit": launch.get("commit")}}


def write_weights(backbone: torch.nn.Module, path: Path) -> str:
    """The backbone's state dict as safetensors (contiguous CPU tensors, as timm saves them); its sha256.
    Serialised in memory and written by write_atomic: safetensors' own file writer makes owner-only files."""
    from safetensors.torch import save
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_run(run: Path, which: str) -> tuple[LoadedRun, DataFacts, dict, dict]:
    """The run's model (as `load_run` builds it), its data facts, the checkpoint and the launch record."""
    loaded = load_run(run, which, torch.device("cpu"))
    state = ckpt.load(loaded.checkpoint)  # load_run read it too; the progress and fingerprint are in it
    return loaded, loaded.data, state, read_json(run / "config.json") or {}


def export_run(run: str | Path, out: str | Path, which: str = "best", onnx: bool = False) -> Path:
    """Writes the export of `run`'s checkpoint `which` into `out` (see the module's doc); returns `out`."""
    run, out = Path(run), Path(out)
    if onnx:
        onnx_export.check_available()
    previous = check_out(out, run)
    loaded, facts, state, launch = read_run(run, which)
    epochs = read_epochs(run)
    card = CardFacts(out.resolve().name, loaded.cfg.model, loaded.cfg.to_dict(), facts, loaded.checkpoint.name,
                     loaded.epoch, epochs, launch.get("command"), launch.get("commit"), state.get("data_fingerprint"),
                     data_origin(loaded.cfg.shards, state.get("data_fingerprint")),
                     same_evaluation(read_json(run / "eval.json"), loaded), read_json(run / "summary.json"), onnx)
    config = {**timm_config(loaded.model.backbone, loaded.cfg, facts), "gzfast": gzfast_fields(loaded, facts, state, launch)}
    out.mkdir(parents=True, exist_ok=True)
    if previous is None:  # claims the folder first: an export stopped half-way is recognisably export's
        write_atomic(out / CONFIG, json.dumps({"gzfast": {"format": FORMAT, "complete": False}}) + "\n")
    config["gzfast"]["weights_sha256"] = write_weights(loaded.model.backbone, out / WEIGHTS)
    config["gzfast"]["onnx_sha256"] = None
    if onnx:
        worst = onnx_export.export_onnx(loaded.model, out / ONNX, loaded.cfg.image_size)
        config["gzfast"]["onnx_sha256"] = sha256_of(out / ONNX)
        print(f"{PROG}: {out / ONNX}: onnxruntime matches PyTorch within {worst:.1e}")
    elif previous is not None:
        (out / ONNX).unlink(missing_ok=True)  # an earlier export's, of other weights
    write_atomic(out / CARD, model_card(card))
    write_atomic(out / CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gzfast.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="run folder of gzfast/train.py (its --out)")
    ap.add_argument("--out", required=True, help="a new or empty folder, or one that export wrote before")
    ap.add_argument("--checkpoint", default="best", help="best, last or the path of a checkpoint of the run (default best)")
    ap.add_argument("--onnx", action="store_true", help="also model.onnx, checked with onnxruntime (pip install -e '.[onnx]')")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def command():
        out = export_run(args.run, args.out, args.checkpoint, args.onnx)
        print(f"{PROG}: wrote {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.name in OWN_FILES))}")
        print(f"{PROG}: load it with timm.create_model('local-dir:{out}', pretrained=True); the model card is {out / CARD}")
    return run_command(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
