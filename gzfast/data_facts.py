"""What a model knows of its data without the shards: the decision tree, the side of the packed images, how
images of other sizes were brought to it, and whether its labels came from vote counts. The trainer
records it with every run (config.json and each checkpoint, under "data"); prediction, embedding and
export read it back (and an export carries it), so an image gets the pixels packing would give it."""
from __future__ import annotations

from dataclasses import dataclass

from shard_tools.errors import UserError
from shard_tools.layout import IMAGE_SIDE
from shard_tools.trees import GZ2_KAGGLE, Tree, TreeError

FITS = (None, "crop", "resize")  # None: the Kaggle layout (side x side JPEGs kept as they are)


class DataFactsError(UserError, ValueError):
    """A data record that cannot be read; the message names where it is."""


@dataclass(frozen=True)
class DataFacts:
    tree: Tree = GZ2_KAGGLE
    image_side: int = IMAGE_SIDE
    fit: str | None = None
    has_counts: bool = False

    @property
    def kaggle(self) -> bool:
        """The gz2-kaggle tree: predictions are a Kaggle submission."""
        return self.tree.name == GZ2_KAGGLE.name and self.tree.columns == GZ2_KAGGLE.columns

    @classmethod
    def of(cls, packed) -> DataFacts:
        """The facts of a packed set (shard_tools.layout.PackedSet)."""
        return cls(packed.tree, packed.image_side, packed.manifest.get("image", {}).get("fit"), packed.has_counts)

    @classmethod
    def from_record(cls, data: dict | None, where: str) -> DataFacts:
        """From a "data" record; a run from before the record (None) is a gz2-kaggle run at 424 px."""
        if data is None:
            return cls()
        try:
            tree = Tree.from_dict(data["tree"], f"{where}: data.tree")
            side, fit, has_counts = int(data.get("image_side", IMAGE_SIDE)), data.get("fit"), data.get("has_counts", False)
        except TreeError as exc:
            raise DataFactsError(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataFactsError(f"{where}: the data record lacks or garbles a field ({exc!r})") from None
        if side < 1 or fit not in FITS or not isinstance(has_counts, bool):
            raise DataFactsError(f"{where}: the data record has image_side {side!r}, fit {fit!r}, has_counts "
                                 f"{has_counts!r}")
        return cls(tree, side, fit, has_counts)

    def to_record(self) -> dict:
        return {"tree": self.tree.to_dict(), "image_side": self.image_side, "has_counts": self.has_counts, "fit": self.fit}
