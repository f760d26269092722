"""Client-side drift remedies: the logit adjustment and the proximal term do what they say."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from festa.shared.train.drift import (
    add_proximal_term,
    class_balanced_indices,
    log_class_prior,
    logit_adjusted_loss,
    sampled_log_prior,
)


def test_log_class_prior_is_laplace_smoothed_frequencies():
    prior = log_class_prior(np.array([0, 0, 0, 2]), 3)
    assert torch.allclose(prior.exp(), torch.tensor([4 / 7, 1 / 7, 2 / 7]))
    with pytest.raises(ValueError, match="labels must lie"):
        log_class_prior(np.array([0, 3]), 3)


def test_logit_adjustment_shifts_logits_by_tau_log_prior():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 1, 0])
    log_prior = torch.tensor([math.log(0.7), math.log(0.2), math.log(0.1)])
    batch = {"label": labels}
    expected = F.cross_entropy(logits + 0.5 * log_prior, labels)
    assert torch.allclose(logit_adjusted_loss(log_prior, 0.5)(logits, batch), expected)
    assert torch.allclose(
        logit_adjusted_loss(log_prior, 0.0)(logits, batch), F.cross_entropy(logits, labels)
    )
    # A site whose prior is the true class frequency: the prior-matching logits (all zero after
    # adjustment = the prior itself) are a worse fit than uniform logits under balanced softmax.
    prior_logits = log_prior.expand(5, 3)
    assert logit_adjusted_loss(log_prior, 1.0)(prior_logits, batch) > logit_adjusted_loss(
        log_prior, 1.0
    )(torch.zeros(5, 3), batch)


def test_proximal_term_pulls_towards_the_round_start_weights():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    add_proximal_term(opt, [w], mu=2.0)
    with torch.no_grad():
        w.add_(torch.tensor([0.5, 0.5]))  # drift away from the anchor (1, -2)
    w.grad = torch.zeros(2)  # no task gradient: only the proximal pull
    opt.step()
    # grad = mu * (w - w0) = 2 * 0.5 = 1 -> w = (1.5, -1.5) - 0.1 * 1
    assert torch.allclose(w.detach(), torch.tensor([1.4, -1.6]))
    with pytest.raises(ValueError):
        add_proximal_term(opt, [w], mu=-1.0)


def test_class_balanced_indices_give_every_present_class_an_equal_share():
    labels = np.array([0] * 60 + [1] * 3 + [2] * 20)  # the dataset; class 2 not at this site
    pool = np.arange(63)  # classes 0 and 1 only, 20 : 1
    drawn = class_balanced_indices(labels, pool, 40, seed=7)
    assert set(drawn.tolist()) <= set(pool.tolist())
    assert np.bincount(labels[drawn], minlength=3).tolist() == [20, 20, 0]
    pairs = labels[drawn].reshape(-1, 2)  # each run of 2 draws holds one of each class
    assert (np.sort(pairs, axis=1) == [0, 1]).all()
    # the rare class cycles through all its examples before repeating one
    assert sorted(drawn[labels[drawn] == 1][:3].tolist()) == [60, 61, 62]
    assert np.array_equal(drawn, class_balanced_indices(labels, pool, 40, seed=7))
    assert not np.array_equal(drawn, class_balanced_indices(labels, pool, 40, seed=8))
    with pytest.raises(ValueError, match="at least one example"):
        class_balanced_indices(labels, np.array([], dtype=np.int64), 4, seed=0)


def test_sampled_prior_is_uniform_over_present_classes_under_balanced_sampling():
    labels = np.array([0] * 9 + [1])
    assert torch.allclose(sampled_log_prior(labels, 3, False), log_class_prior(labels, 3))
    balanced = sampled_log_prior(labels, 3, True).exp()
    assert torch.allclose(balanced, torch.tensor([2 / 5, 2 / 5, 1 / 5]))
