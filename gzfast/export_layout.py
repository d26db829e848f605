"""The layout of an exported model folder (what `python -m gzfast.export` writes): the one namer and
recogniser of its files, and the data facts a run records. Torch-free.

    DIR/model.safetensors  the backbone's weights under timm's own names (its classifier: one output per answer)
    DIR/config.json        timm's pretrained config (architecture, num_classes, label_names, pretrained_cfg with the
                           input size, mean/std, interpolation, crop) and, under "gzfast", what timm does not know:
                           the head, the decision tree, the image geometry, the run it came from
    DIR/README.md          the model card
    DIR/model.onnx         backbone + head (with --onnx)

config.json is written last, with the sha256 of the weights (and of model.onnx): it marks the folder as an
export's, and a folder whose weights do not match it (an export that stopped half-way) is not trusted.
"""
from __future__ import annotations

import json
from pathlib import Path

from shard_tools.errors import UserError

FORMAT = "gzfast-model-v1"
WEIGHTS, CONFIG, CARD, ONNX = "model.safetensors", "config.json", "README.md", "model.onnx"
OWN_FILES = (WEIGHTS, CONFIG, CARD, ONNX)


class ModelDirError(UserError, ValueError):
    """A model folder that cannot be used (or written); the message names the file and what to do."""


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def export_config(folder: str | Path) -> dict | None:
    """The config.json of a folder `gzfast.export` wrote (complete or not), else None."""
    data = read_json(Path(folder) / CONFIG)
    ours = data is not None and isinstance(data.get("gzfast"), dict) and data["gzfast"].get("format") == FORMAT
    return data if ours else None
