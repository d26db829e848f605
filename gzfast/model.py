"""The model: a timm backbone with one output per answer of the decision tree, and its head
(`gzfast.heads`: sigmoid, tree-constrained softmax, or Dirichlet concentrations); stage freezing, parameter
groups, local weights.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .heads import HEADS, TreeHead, kaggle_tree, make_head, to_fractions
from .pretrained import PretrainedError, lookalike, misfits, read_encoder, shapes

__all__ = ["GZ2Model", "TreeHead", "freeze", "frozen_modules", "load_pretrained", "param_groups"]


class GZ2Model(nn.Module):
    """`backbone` (timm, `tree.n` outputs) then `head`. `forward` gives the head's outputs (fractions, or
    concentrations for the dirichlet head); `fractions` turns them into cumulative vote fractions."""

    def __init__(self, name: str = "convnext_small", head: str = "sigmoid", tree=None, drop_path_rate: float = 0.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.tree = tree if tree is not None else kaggle_tree()
        self.kind = head
        self.backbone = timm.create_model(name, pretrained=False, num_classes=self.tree.n, drop_path_rate=drop_path_rate)
        self.head = make_head(head, self.tree)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).float())

    def fractions(self, outputs: torch.Tensor) -> torch.Tensor:
        return to_fractions(outputs, self.kind, self.tree)


def load_pretrained(model: GZ2Model, path: str | Path) -> dict:
    """Loads timm weights into the backbone: a full classifier's state dict or a headless encoder's
    (`num_classes=0`, zoobot's form), in any form `gzfast.pretrained.read_encoder` reads. The classifier is
    ours (fresh, one output per answer) unless the file is a gzfast export of the same answers and head.
    Returns {"loaded": n, "skipped": [dropped names], "classifier": "kept" | "replaced" | "new", "summary": line}.
    Every other difference refuses the file (PretrainedError), naming the first misfits and the timm model the
    tensors belong to."""
    weights = read_encoder(path)
    ours, theirs = shapes(model.backbone.state_dict()), shapes(weights.tensors)
    classifier = classifier_names(model)
    bad = misfits(theirs, ours, classifier)
    name = model.backbone.default_cfg.get("architecture") or type(model.backbone).__name__
    if bad:
        raise PretrainedError(f"--pretrained {weights.path}: cannot use it: {len(bad)} of its tensors do not fit {name} "
                              f"(first: {'; '.join(bad[:3])}); {lookalike(theirs, ours, name, classifier)}")
    old_head = [k for k in weights.tensors if k in classifier]
    keep, why = classifier_fate(model, weights, old_head, ours, theirs)
    usable = {k: v for k, v in weights.tensors.items() if k not in classifier or keep}
    model.backbone.load_state_dict(usable, strict=False)  # not strict for the classifier only: misfits() checked the rest
    skipped = [] if keep else old_head
    summary = f"--pretrained {weights.path}: loaded {len(usable)} backbone tensors; {why}"
    if weights.prefix:
        summary += f"; names under {weights.prefix!r}" + (f", {len(weights.outside)} tensors outside it dropped "
                                                          f"(e.g. {', '.join(weights.outside[:3])})" if weights.outside else "")
    return {"loaded": len(usable), "skipped": skipped + weights.outside,
            "classifier": "kept" if keep else "replaced" if old_head else "new", "summary": summary}


def classifier_fate(model: GZ2Model, weights, old_head: list[str], ours: dict, theirs: dict) -> tuple[bool, str]:
    """Whether the file's classifier is kept, and the words saying what became of it: kept only when it is an
    export of the same answers (in order) and head, so its outputs mean what ours do."""
    n = model.tree.n
    if not old_head:
        return False, f"a headless encoder: the classifier ({n} outputs, one per answer) starts fresh"
    dropped = f"dropped its classifier ({', '.join(old_head)}"
    if any(theirs[k] != ours[k] for k in old_head):
        out = theirs[old_head[0]][0] if theirs[old_head[0]] else "?"
        return False, f"{dropped}: {out} outputs; ours has {n}, freshly initialised)"
    gz = (weights.export_config or {}).get("gzfast", {})
    same = weights.export_config is not None and weights.export_config.get("label_names") == list(model.tree.columns) \
        and gz.get("head") == model.kind and set(old_head) == classifier_names(model)
    if same:
        return True, f"kept its classifier (an export of the same {n} answers, {model.kind} head)"
    return False, f"{dropped}: not known to mean our {n} answers with a {model.kind} head; freshly initialised)"


def head_module(model: GZ2Model) -> nn.Module:
    """The part trained at --lr-head: timm's `head` (norm + fc) on a ConvNeXt, the classifier elsewhere."""
    head = getattr(model.backbone, "head", None)
    return head if isinstance(head, nn.Module) else model.backbone.get_classifier()


def classifier_names(model: GZ2Model) -> set[str]:
    """State-dict names of the final classifier (replaced when loading pretrained weights)."""
    ids = {id(p) for p in model.backbone.get_classifier().parameters()}
    return {n for n, p in model.backbone.named_parameters() if id(p) in ids}


def frozen_modules(model: GZ2Model, stages: int) -> list[nn.Module]:
    """The stem and the first `stages` stages of the ConvNeXt."""
    if stages == 0:
        return []
    backbone = model.backbone
    if not (hasattr(backbone, "stem") and hasattr(backbone, "stages")):
        raise ValueError(f"--freeze-stages {stages}: {type(backbone).__name__} has no stem/stages to freeze "
                         f"(a ConvNeXt has); use --freeze-stages 0")
    n = len(backbone.stages)
    if not 0 <= stages <= n:
        raise ValueError(f"--freeze-stages {stages}: the model has {n} stages")
    return [backbone.stem, *backbone.stages[:stages]]


def freeze(model: GZ2Model, stages: int) -> int:
    """Freezes the stem and the first `stages` stages; returns how many parameters were frozen."""
    count = 0
    for module in frozen_modules(model, stages):
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def param_groups(model: GZ2Model, lr_backbone: float, lr_head: float, weight_decay: float) -> list[dict]:
    """AdamW groups: the head at lr_head, the rest at lr_backbone; no weight decay on norms and biases
    (1-d tensors), as timm does."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    groups = {(h, d): [] for h in (True, False) for d in (True, False)}
    for p in model.backbone.parameters():
        if p.requires_grad:
            groups[(id(p) in head_ids, p.ndim > 1)].append(p)
    out = []
    for (is_head, decay), params in groups.items():
        if params:
            out.append({"params": params, "lr": lr_head if is_head else lr_backbone,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": ("head" if is_head else "backbone") + ("" if decay else "_no_decay")})
    return out
