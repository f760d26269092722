"""Label attacks on returned gradients beat the majority class on real tail gradients and
fall to it on pure noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from festa.shared.config import ModelConfig
from festa.shared.privacy import (
    cluster_gradients,
    gradient_norm_attack,
    infer_labels_from_gradients,
    majority_rate,
    matched_accuracy,
)
from festa.shared.tasks import get_task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
TASK = get_task("classification")
C = CFG.num_classes
# Imbalanced labels: the majority class is 50 %, so "beats the majority" has room to fail.
LABELS = torch.tensor(([0] * 6 + [1] * 3 + [2] * 3) * 8)
MAJORITY = majority_rate(LABELS.numpy(), C)


def _tail(favour_class0: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(1)
    tail = TASK.build_tail(CFG)
    last = [m for m in tail.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[0] += favour_class0  # a model that already fits the majority class
    return tail


def _gradients(tail: torch.nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    body_out = torch.randn(len(labels), CFG.num_tokens, CFG.embed_dim)
    out = body_out.clone().requires_grad_(True)
    TASK.loss(tail(out), {"label": labels}).backward()
    return body_out, out.grad


def _noise(n: int) -> torch.Tensor:
    return torch.randn(n, CFG.num_tokens, CFG.embed_dim, generator=torch.Generator().manual_seed(9))


def test_majority_rate():
    assert MAJORITY == pytest.approx(0.5)
    assert majority_rate(np.array([2, 2, 2, 1]), 3) == pytest.approx(0.75)


def test_gradient_matching_recovers_labels_and_not_noise():
    tail = _tail()
    body_out, grad = _gradients(tail, LABELS)
    assert torch.equal(infer_labels_from_gradients(tail, TASK.loss, body_out, grad, C), LABELS)
    wrong = (LABELS + 1) % C  # it reports the labels in the gradient, not some fixed guess
    _, grad = _gradients(tail, wrong)
    assert torch.equal(infer_labels_from_gradients(tail, TASK.loss, body_out, grad, C), wrong)
    guessed = infer_labels_from_gradients(tail, TASK.loss, body_out, _noise(len(LABELS)), C)
    assert float((guessed == LABELS).float().mean()) < MAJORITY + 0.05


def test_clustering_gradient_directions_separates_classes_and_not_noise():
    _, grad = _gradients(_tail(), LABELS)
    labels = LABELS.numpy()
    assert matched_accuracy(cluster_gradients(grad, C), labels, C) > MAJORITY + 0.3
    noise = matched_accuracy(cluster_gradients(_noise(len(labels)), C), labels, C)
    assert noise < MAJORITY + 0.05


def test_gradient_norms_give_away_the_class_a_model_fits():
    _, grad = _gradients(_tail(favour_class0=2.0), LABELS)
    labels = LABELS.numpy()
    assert matched_accuracy(gradient_norm_attack(grad), labels, C) > MAJORITY + 0.15
    noise = matched_accuracy(gradient_norm_attack(_noise(len(labels))), labels, C)
    assert noise < MAJORITY + 0.05


def test_matched_accuracy_uses_the_best_mapping():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels, 3) == 1.0
    assert matched_accuracy(np.array([0, 1, 0, 1, 0, 1]), labels, 3) == pytest.approx(2 / 6)
