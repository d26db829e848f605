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
    """Loads a timm-format state dict (.safetensors or .pth) into the backbone; the classifier (head.fc on
    a ConvNeXt) is replaced by ours. Returns {"loaded": n, "skipped": [names]}. Any other mismatch is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = model.backbone.state_dict()
    classifier = classifier_names(model)
    skipped = [k for k in state if k in classifier or k not in own or own[k].shape != state[k].shape]
    bad = [k for k in skipped if k not in classifier]
    if bad:
        raise ValueError(f"--pretrained {path}: {len(bad)} tensors do not fit {type(model.backbone).__name__} "
                         f"(e.g. {bad[:3]}); is it a state dict of the same timm model?")
    usable = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in own if k not in usable and k not in classifier]
    if missing:
        raise ValueError(f"--pretrained {path}: missing {len(missing)} backbone tensors (e.g. {missing[:3]})")
    model.backbone.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "skipped": skipped}


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
