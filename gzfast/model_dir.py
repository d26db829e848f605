"""An exported model folder read back for prediction: `load_model_dir(DIR)` gives what `inference.load_run`
gives for a run (the settings, the model in eval mode on the device), plus the data facts, so `predict`,
`embed` and `evaluate` can take `--model-dir DIR` in place of `--run RUN`.

Nothing is trusted unchecked: config.json must be an export's and complete, the weights must be the ones it
names (sha256), and its timm fields must agree with its gzfast fields (a hand-edited file is refused).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from shard_tools.errors import first_line

from .config import ConfigError, config_from_dict
from .data_facts import DataFacts
from .export_layout import CONFIG, WEIGHTS, ModelDirError, export_config
from .inference import LoadedRun, for_inference


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_facts(config: dict, where: str) -> DataFacts:
    gz = config["gzfast"]
    image = gz.get("image") or {}
    return DataFacts.from_record({"tree": gz.get("tree"), "image_side": image.get("source_side"), "fit": image.get("fit"),
                                  "has_counts": gz.get("has_counts", False)}, where)


def read_export(folder: Path) -> dict:
    """The folder's config.json, checked to be a complete export whose weights are the ones it names."""
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise ModelDirError(f"--model-dir {folder}: {what}; pass a folder written by python -m gzfast.export")
    config = export_config(folder)
    if config is None:
        why = "no such file" if not (folder / CONFIG).exists() else "not the config of a gzfast export"
        raise ModelDirError(f"{folder / CONFIG}: {why}; pass a folder written by python -m gzfast.export")
    gz = config["gzfast"]
    if not gz.get("complete"):
        raise ModelDirError(f"{folder}: an export that did not finish; run python -m gzfast.export again")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelDirError(f"{weights}: missing; run python -m gzfast.export again")
    if sha256_of(weights) != gz.get("weights_sha256"):
        raise ModelDirError(f"{weights}: not the weights {CONFIG} names (sha256 differs): the folder was changed after "
                            f"the export, or an export stopped half-way; run python -m gzfast.export again")
    return config


def check_agreement(config: dict, cfg, facts: DataFacts, where: str):
    """timm's fields (what plain timm builds) must say what gzfast's fields say."""
    timm_says = (config.get("architecture"), config.get("num_classes"), config.get("label_names"),
                 (config.get("pretrained_cfg") or {}).get("input_size"))
    gzfast_says = (cfg.model, facts.tree.n, list(facts.tree.columns), [3, cfg.image_size, cfg.image_size])
    if timm_says != gzfast_says or config["gzfast"].get("head") != cfg.head:
        raise ModelDirError(f"{where}: its timm fields (architecture, num_classes, label_names, input_size) disagree with "
                            f"its gzfast fields ({cfg.model}, {facts.tree.n} answers, {cfg.image_size} px, {cfg.head} head); "
                            f"was it edited? Run python -m gzfast.export again")


def load_model_dir(path: str | Path, device: torch.device | None = None) -> LoadedRun:
    """The exported model in `path`, built as trained, in eval mode, channels-last, on `device` (default: the
    GPU if there is one)."""
    from safetensors.torch import load_file

    from .model import GZ2Model  # timm: imported only once a model is really loaded

    folder = Path(path)
    config = read_export(folder)
    where = str(folder / CONFIG)
    facts = data_facts(config, where)
    try:
        cfg = config_from_dict(config["gzfast"]["train_config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelDirError(f"{where}: its gzfast.train_config cannot be read ({exc}); run python -m gzfast.export "
                            f"again with this gzfast") from None
    check_agreement(config, cfg, facts, where)
    model = GZ2Model(cfg.model, cfg.head, facts.tree)
    try:
        model.backbone.load_state_dict(load_file(str(folder / WEIGHTS)))
    except RuntimeError as exc:
        raise ModelDirError(f"{folder / WEIGHTS}: the weights do not fit {cfg.model} ({first_line(exc)}); run python -m "
                            f"gzfast.export again") from None
    source = config["gzfast"].get("source") or {}
    return LoadedRun(folder, folder / WEIGHTS, cfg, for_inference(model, device), source.get("epoch"), facts,
                     source.get("data_fingerprint"), config["gzfast"]["weights_sha256"])

