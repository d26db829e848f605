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
from dataclasses import dataclass
from pathlib import Path

from shard_tools.errors import UserError
from shard_tools.layout import IMAGE_SIDE
from shard_tools.trees import GZ2_KAGGLE, Tree, TreeError

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


@dataclass(frozen=True)
class DataFacts:
    """What a model needs to know of its data without the shards (a run's config.json and checkpoints record
    it under "data"): the decision tree, the side of the packed images, how other images were brought to it
    ("crop" or "resize"; None for the Kaggle layout, whose images are all 424 px), and whether labels were counts."""
    tree: Tree
    image_side: int
    fit: str | None
    has_counts: bool

    @classmethod
    def from_record(cls, data: dict | None, where: str) -> DataFacts:
        """From a "data" record; a run from before the record (None) is a gz2-kaggle run at 424 px."""
        if data is None:
            return cls(GZ2_KAGGLE, IMAGE_SIDE, None, False)
        try:
            tree = Tree.from_dict(data["tree"], f"{where}: data.tree")
            side = int(data.get("image_side", IMAGE_SIDE))
            fit = data.get("fit")
            has_counts = data.get("has_counts", False)
        except TreeError as exc:
            raise ModelDirError(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelDirError(f"{where}: the data record lacks or garbles a field ({exc!r})") from None
        if side < 1 or fit not in (None, "crop", "resize") or not isinstance(has_counts, bool):
            raise ModelDirError(f"{where}: the data record has image_side {side!r}, fit {fit!r}, has_counts "
                                f"{has_counts!r}; export the run again")
        return cls(tree, side, fit, has_counts)

    def to_dict(self) -> dict:
        return {"tree": self.tree.to_dict(), "image_side": self.image_side, "has_counts": self.has_counts,
                "fit": self.fit}
