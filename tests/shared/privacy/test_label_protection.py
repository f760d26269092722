"""Label protection of returned gradients: every attack, the one that knows the defence
included, falls from near-perfect to about the majority class; the noise is unbiased; the
split step sends the protected gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from festa.shared.config import ModelConfig
from festa.shared.model import Body, Head
from festa.shared.model.split import split_train_step
from festa.shared.privacy import (
    CuriousBodyLink,
    cluster_gradients,
    gradient_norm_attack,
    infer_labels_from_gradients,
    majority_rate,
    matched_accuracy,
)
from festa.shared.privacy.gradient_labels import decode_labels_from_gradients
from festa.shared.privacy.label_protection import LabelGradientNoise, label_dp_epsilon
from festa.shared.tasks import get_task
from tests.shared.privacy.conftest import one_classification_site

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
TASK = get_task("classification")
C = CFG.num_classes
LABELS = torch.tensor(([0] * 6 + [1] * 3 + [2] * 3) * 16)  # majority class 50 %
MAJORITY = majority_rate(LABELS.numpy(), C)


def _tail() -> torch.nn.Module:
    torch.manual_seed(1)
    return TASK.build_tail(CFG)


def _exact(tail: torch.nn.Module, body_out: torch.Tensor) -> torch.Tensor:
    out = body_out.clone().requires_grad_(True)
    TASK.loss(tail(out), {"label": LABELS}).backward()
    return out.grad


def _best_attack(tail, body_out, grad, noise: float) -> float:
    y = LABELS.numpy()
    prior = np.bincount(y, minlength=C) / len(y)
    guesses = [
        infer_labels_from_gradients(tail, TASK.loss, body_out, grad, C).numpy(),
        decode_labels_from_gradients(tail, TASK.loss, body_out, grad).numpy(),
        decode_labels_from_gradients(tail, TASK.loss, body_out, grad, noise, prior).numpy(),
    ]
    rates = [float((g == y).mean()) for g in guesses]
    rates.append(matched_accuracy(cluster_gradients(grad, C), y, C))
    rates.append(matched_accuracy(gradient_norm_attack(grad), y, C))
    return max(rates)


def test_protection_brings_every_attack_to_the_majority_class():
    tail = _tail()
    body_out = torch.randn(len(LABELS), CFG.num_tokens, CFG.embed_dim)
    grad = _exact(tail, body_out)
    assert _best_attack(tail, body_out, grad, 0.0) == pytest.approx(1.0)  # the control leaks
    protect = LabelGradientNoise(TASK.loss, 6.0, torch.Generator().manual_seed(0))
    sent = protect(grad, body_out, tail, {"label": LABELS})
    assert _best_attack(tail, body_out, sent, 6.0) <= MAJORITY + 0.1
    weak = LabelGradientNoise(TASK.loss, 0.3, torch.Generator().manual_seed(0))
    # too little noise: the attacker that knows the defence still reads the labels
    assert _best_attack(tail, body_out, weak(grad, body_out, tail, {"label": LABELS}), 0.3) > 0.8


def test_noise_is_unbiased():
    tail = _tail()
    body_out = torch.randn(len(LABELS), CFG.num_tokens, CFG.embed_dim)
    grad = _exact(tail, body_out)
    protect = LabelGradientNoise(TASK.loss, 2.0, torch.Generator().manual_seed(3))
    draws = torch.stack([protect(grad, body_out, tail, {"label": LABELS}) for _ in range(400)])
    spread = (draws - grad).flatten(1).norm(dim=1).mean()
    bias = (draws.mean(0) - grad).flatten(1).norm(dim=1).mean()
    assert spread > 2 * grad.flatten(1).norm(dim=1).mean()  # it does add noise
    assert bias < 0.15 * spread  # ~ spread / sqrt(400) = 0.05 spread


def test_split_step_sends_the_protected_gradient():
    torch.manual_seed(0)
    head, tail, body = Head(CFG), _tail(), Body(CFG)
    link = CuriousBodyLink(body)
    batch = {"image": torch.rand(len(LABELS), 1, 32, 32), "label": LABELS}
    split_train_step(head, tail, TASK.loss, batch, link)
    exact = link.grads[-1]
    protect = LabelGradientNoise(TASK.loss, 6.0, torch.Generator().manual_seed(0))
    split_train_step(head, tail, TASK.loss, batch, link, grad_transform=protect)
    assert not torch.allclose(link.grads[-1], exact, atol=1e-6)
    y = LABELS.numpy()
    body_out = link.outputs[-1]
    assert (
        infer_labels_from_gradients(tail, TASK.loss, body_out, exact, C).numpy() == y
    ).mean() > 0.9
    assert _best_attack(tail, body_out, link.grads[-1], 6.0) <= MAJORITY + 0.1


def test_bad_setting_and_epsilon():
    with pytest.raises(ValueError, match="label noise"):
        LabelGradientNoise(TASK.loss, -1.0, torch.Generator())
    assert label_dp_epsilon(0.0, 10) == math.inf
    assert label_dp_epsilon(6.0, 1) < label_dp_epsilon(6.0, 100) < label_dp_epsilon(2.0, 100)


def test_a_protected_client_round_leaks_far_less_than_an_unprotected_one():
    """`train_round` with `label_protection` (the config path every client takes) against a curious
    body: the best attack falls from ~100 % to about the majority class."""
    import copy

    from festa.client.local_training import round_seed, train_round
    from festa.client.site_data import simulated_site
    from festa.shared.train.task_model import TaskModel, cycle_batches, make_loader

    base = one_classification_site(CFG, 4, 64)
    rates = {}
    for noise in (0.0, 6.0, "tail-only"):
        update = (
            {"label_protection": noise}
            if noise == "tail-only"
            else {"label_protection": "noise" if noise else "off", "label_noise": noise}
        )
        cfg = base.model_copy(update=update)
        site = simulated_site(cfg, 0)
        torch.manual_seed(0)
        model = TaskModel.build("classification", cfg.model)
        sent_tail = copy.deepcopy(model.tail).eval()  # what the server sent at the round's start
        link = CuriousBodyLink(Body(cfg.model))
        train_round(cfg, site, model, link, 1)
        seed = round_seed(cfg.seed, 1, site.site_id)
        loader = make_loader(site.train, site.train_indices, 16, True, seed)
        labels = torch.cat([b["label"] for b in cycle_batches(loader, cfg.local_steps)]).numpy()
        guesses = torch.cat(
            [
                decode_labels_from_gradients(sent_tail, TASK.loss, o, g)
                for o, g in zip(link.outputs, link.grads, strict=True)
            ]
        ).numpy()
        if noise == "tail-only":  # nothing label-bearing leaves: every returned gradient is 0
            assert all(not g.any() for g in link.grads) and len(link.grads) == cfg.local_steps
            continue
        kmeans = matched_accuracy(cluster_gradients(torch.cat(link.grads), C), labels, C)
        rates[noise] = (max(float((guesses == labels).mean()), kmeans), majority_rate(labels, C))
    assert rates[0.0][0] > 0.9
    assert rates[6.0][0] <= rates[6.0][1] + 0.2 and rates[6.0][0] < rates[0.0][0] - 0.4
