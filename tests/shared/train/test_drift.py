"""Client-side drift remedies: the logit adjustment and the proximal term do what they say."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from festa.shared.train.drift import add_proximal_term, log_class_prior, logit_adjusted_loss


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
