"""Output heads: what the network's raw outputs become, for any decision tree.

- `sigmoid`: each answer's cumulative vote fraction squashed independently (the Kaggle models' head);
- `tree`: per question a softmax over its answers, times the value of the answer that asks it, so the
  fractions obey the decision tree by construction;
- `dirichlet`: per answer a Dirichlet concentration (1..100, as zoobot's), trained on vote counts with
  the Dirichlet-multinomial loss (`gzfast.losses`); its fractions are the concentrations normalised per
  question and chained down the tree.

Fractions are cumulative everywhere (docs/design.md): an answer's value is the share of the galaxy's
volunteers who gave it, so a question's answers sum to the value of the answer that asks it.
"""
from __future__ import annotations

import torch
from torch import nn

HEADS = ("sigmoid", "tree", "dirichlet")
CONCENTRATION_RANGE = (1.0, 100.0)  # zoobot's: 1 + 99 * sigmoid


def chain(per_question: torch.Tensor, tree) -> torch.Tensor:
    """Per-question fractions (each question's answers summing to 1) -> cumulative fractions: every
    question's split times the cumulative value of the answer that asks it (parents come first)."""
    columns: list[torch.Tensor | None] = [None] * per_question.shape[1]  # out of place: autograd needs parents intact
    for q in tree.questions:
        part = per_question[:, list(q.columns)]
        if q.parent is not None:
            part = part * columns[q.parent]
        for k, c in enumerate(q.columns):
            columns[c] = part[:, k:k + 1]
    return torch.cat(columns, dim=1)


def per_question_softmax(raw: torch.Tensor, tree) -> torch.Tensor:
    out = torch.empty_like(raw)
    for q in tree.questions:
        out[:, list(q.columns)] = torch.softmax(raw[:, list(q.columns)], dim=1)
    return out


def normalise_per_question(values: torch.Tensor, tree) -> torch.Tensor:
    """Each question's values divided by their sum (concentrations -> expected vote shares)."""
    out = torch.empty_like(values)
    for q in tree.questions:
        part = values[:, list(q.columns)]
        out[:, list(q.columns)] = part / part.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return out


class TreeHead(nn.Module):
    """Raw outputs -> fractions that obey the decision tree: a softmax over each question's answers,
    times the parent answer's value.

    Why a softmax and not Dieleman's clamp-at-0-and-normalise: with a freshly initialised classifier about
    half of the raw outputs start below 0, where the clamp passes no gradient, so those answers stay dead
    (predicted ~0 for every galaxy) and the head trains poorly. The softmax has a gradient everywhere,
    starts at the uniform split, and still sums exactly to the parent value."""

    def __init__(self, tree=None):
        super().__init__()
        self.tree = tree if tree is not None else kaggle_tree()

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return chain(per_question_softmax(raw.float(), self.tree), self.tree)


class DirichletHead(nn.Module):
    """Raw outputs -> Dirichlet concentrations in CONCENTRATION_RANGE."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        lo, hi = CONCENTRATION_RANGE
        return lo + (hi - lo) * torch.sigmoid(raw.float())


def make_head(kind: str, tree) -> nn.Module:
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tree":
        return TreeHead(tree)
    if kind == "dirichlet":
        return DirichletHead()
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


def to_fractions(outputs: torch.Tensor, kind: str, tree) -> torch.Tensor:
    """A head's outputs as cumulative fractions: themselves for sigmoid and tree heads, the normalised,
    chained concentrations for the dirichlet head."""
    if kind != "dirichlet":
        return outputs
    return chain(normalise_per_question(outputs.float(), tree), tree)


def kaggle_tree():
    """The gz2-kaggle tree (the default of every model and head)."""
    from shard_tools.trees import load_tree
    return load_tree("gz2-kaggle")
