"""Training losses: MSE on cumulative vote fractions (the Kaggle metric's square), and the
Dirichlet-multinomial negative log-likelihood of the vote counts per question (zoobot; Walmsley et al.
2022), under which a galaxy that 40 volunteers classified weighs more than one that 5 did, and a
question nobody was asked costs nothing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "dirichlet")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def dirichlet_multinomial_nll(concentrations: torch.Tensor, counts: torch.Tensor, tree) -> torch.Tensor:
    """N×Q: per galaxy and question, -log P(counts | Dirichlet-multinomial(concentrations)). A question
    with no votes has probability 1 (NLL 0)."""
    alpha, k = concentrations.float(), counts.float()
    out = []
    for q in tree.questions:
        a, c = alpha[:, list(q.columns)], k[:, list(q.columns)]
        n, total = c.sum(dim=1), a.sum(dim=1)
        log_p = (torch.lgamma(n + 1) - torch.lgamma(c + 1).sum(dim=1) + torch.lgamma(total) - torch.lgamma(n + total)
                 + (torch.lgamma(c + a) - torch.lgamma(a)).sum(dim=1))
        out.append(-log_p)
    return torch.stack(out, dim=1)


class DirichletLoss:
    """The training loss: per galaxy the NLL summed over questions, averaged over the batch."""

    def __init__(self, tree):
        self.tree = tree

    def __call__(self, concentrations: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return dirichlet_multinomial_nll(concentrations, counts, self.tree).sum(dim=1).mean()
