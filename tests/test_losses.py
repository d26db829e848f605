"""The Dirichlet-multinomial loss and the heads over any decision tree."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gzfast.heads import TreeHead, chain, normalise_per_question, to_fractions
from gzfast.losses import DirichletLoss, dirichlet_multinomial_nll
from shard_tools import schema


def one_question(answers: int):
    return SimpleNamespace(questions=[SimpleNamespace(name="q", columns=tuple(range(answers)), parent=None)], n=answers)


@pytest.mark.parametrize("alpha, n", [((2.5, 0.7), 5), ((1.0, 3.0, 0.4), 4), ((40.0, 1.0, 1.0), 6)])
def test_the_likelihood_is_a_distribution_over_every_way_to_split_the_votes(alpha, n):
    """exp(-NLL) summed over every count vector with n votes is 1, and its mean count is n * alpha / sum(alpha):
    the Dirichlet-multinomial, not merely something shaped like it."""
    tree = one_question(len(alpha))
    splits = [c for c in itertools.product(range(n + 1), repeat=len(alpha)) if sum(c) == n]
    counts = torch.tensor(splits, dtype=torch.float32)
    concentrations = torch.tensor([alpha] * len(splits))
    p = torch.exp(-dirichlet_multinomial_nll(concentrations, counts, tree)[:, 0]).double()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    mean = (p[:, None] * counts.double()).sum(dim=0)
    assert mean.numpy() == pytest.approx(n * np.array(alpha) / sum(alpha), rel=1e-4)


def test_a_question_nobody_was_asked_costs_nothing_and_more_votes_weigh_more():
    tree = SimpleNamespace(questions=schema.QUESTIONS, n=37)
    alpha = torch.full((2, 37), 3.0)
    counts = torch.zeros(2, 37)
    counts[:, 0:3] = torch.tensor([[4.0, 1.0, 0.0], [40.0, 10.0, 0.0]])  # Q1 only; same shares, 10x the volunteers
    nll = dirichlet_multinomial_nll(alpha, counts, tree)
    assert torch.all(nll[:, 1:] == 0)  # every other question: no votes, probability 1
    assert nll[1, 0] > nll[0, 0] > 0   # the same wrong guess costs more when 50 volunteers disagree with it


def test_minimising_the_loss_moves_the_expected_shares_to_the_observed_ones():
    tree = one_question(3)
    counts = torch.tensor([[30.0, 15.0, 5.0]])
    raw = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=0.05)
    loss = DirichletLoss(tree)
    for _ in range(400):
        opt.zero_grad()
        loss(1 + 99 * torch.sigmoid(raw), counts).backward()
        opt.step()
    shares = normalise_per_question(1 + 99 * torch.sigmoid(raw.detach()), tree)
    assert shares.numpy() == pytest.approx(np.array([[0.6, 0.3, 0.1]]), abs=0.03)


def test_dirichlet_fractions_and_the_tree_head_obey_the_gz2_tree():
    tree = SimpleNamespace(questions=schema.QUESTIONS, n=37)
    concentrations = 1 + 99 * torch.rand(64, 37)
    assert schema.check_constraints(to_fractions(concentrations, "dirichlet", tree).numpy(), tol=1e-5).all()
    assert schema.check_constraints(TreeHead(tree)(torch.randn(64, 37) * 3).numpy(), tol=1e-5).all()
    # the sigmoid and tree heads already give fractions
    x = torch.rand(4, 37)
    assert torch.equal(to_fractions(x, "sigmoid", tree), x)


def test_a_two_question_tree_chains_its_child_under_the_asking_answer():
    q1 = SimpleNamespace(name="ring", columns=(0, 1), parent=None)
    q2 = SimpleNamespace(name="merger", columns=(2, 3), parent=0)   # asked only of those who saw a ring
    tree = SimpleNamespace(questions=[q1, q2], n=4)
    per_q = torch.tensor([[0.25, 0.75, 0.5, 0.5]])
    assert chain(per_q, tree).numpy() == pytest.approx(np.array([[0.25, 0.75, 0.125, 0.125]]))
