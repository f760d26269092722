"""The tail-bias attack reads label mixes from real bias gradients, and not from noise."""

from __future__ import annotations

import numpy as np
import torch

from festa.shared.config import ModelConfig
from festa.shared.privacy import label_mix_attack, uniform_mix_error
from festa.shared.tasks import get_task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
TASK = get_task("classification")
C = CFG.num_classes


def _bias_update(mix: np.ndarray, rng: np.random.Generator, lr: float = 0.1) -> np.ndarray:
    """One SGD step's change of the tail's last bias on 48 samples drawn from `mix`."""
    torch.manual_seed(0)  # the same averaged tail for every site, as FedAvg sends it
    tail = TASK.build_tail(CFG)
    labels = torch.as_tensor(rng.choice(C, 48, p=mix))
    body_out = torch.as_tensor(rng.standard_normal((48, CFG.num_tokens, CFG.embed_dim))).float()
    TASK.loss(tail(body_out), {"label": labels}).backward()
    last = [m for m in tail.modules() if isinstance(m, torch.nn.Linear)][-1]
    return -lr * last.bias.grad.numpy()


def _sites(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mixes = rng.dirichlet([0.5] * C, size=n)
    return np.stack([_bias_update(m, rng) for m in mixes]), mixes


def test_label_mix_from_bias_updates_beats_a_uniform_guess():
    rng = np.random.default_rng(0)
    cal_x, cal_y = _sites(16, rng)
    vic_x, truth = _sites(8, rng)
    est = label_mix_attack(cal_x, cal_y, vic_x)
    assert est.shape == truth.shape and np.allclose(est.sum(axis=1), 1)
    assert np.abs(est - truth).mean() < 0.5 * uniform_mix_error(truth)


def test_label_mix_from_noise_is_no_better_than_uniform():
    rng = np.random.default_rng(1)
    cal_y = rng.dirichlet([0.5] * C, size=16)
    truth = rng.dirichlet([0.5] * C, size=200)
    est = label_mix_attack(rng.standard_normal((16, C)), cal_y, rng.standard_normal((200, C)))
    assert np.abs(est - truth).mean() > 0.9 * uniform_mix_error(truth)


MEAN_FEATURE = np.random.default_rng(7).standard_normal(CFG.embed_dim)


def _last_layer_update(mix: np.ndarray, rng: np.random.Generator, lr: float = 0.1) -> np.ndarray:
    """One SGD step's change of the tail's last linear layer, weights and bias, flattened."""
    torch.manual_seed(0)
    tail = TASK.build_tail(CFG)
    labels = torch.as_tensor(rng.choice(C, 48, p=mix))
    # body outputs share a mean feature vector, as a trained body's do
    noise = rng.standard_normal((48, CFG.num_tokens, CFG.embed_dim))
    body_out = torch.as_tensor(MEAN_FEATURE + 0.5 * noise).float()
    TASK.loss(tail(body_out), {"label": labels}).backward()
    last = [m for m in tail.modules() if isinstance(m, torch.nn.Linear)][-1]
    return -lr * torch.cat([last.weight.grad.flatten(), last.bias.grad]).numpy()


def test_label_mix_from_the_whole_last_layer_with_a_cross_validated_ridge():
    """Many more features than calibration rounds: the ridge penalty picked by leave-one-out
    still reads the mix; with the weights shuffled across rounds it cannot."""
    rng = np.random.default_rng(2)
    mixes = rng.dirichlet([0.5] * C, size=40)
    x = np.stack([_last_layer_update(m, rng) for m in mixes])
    assert x.shape[1] > x.shape[0]
    alphas = np.logspace(-3, 4, 15)
    cal, vic = slice(0, 24), slice(24, 40)
    est = label_mix_attack(x[cal], mixes[cal], x[vic], alphas)
    assert np.abs(est - mixes[vic]).mean() < 0.5 * uniform_mix_error(mixes[vic])
    noise = rng.permutation(x)  # updates no longer belong to their mixes
    est = label_mix_attack(noise[cal], mixes[cal], noise[vic], alphas)
    assert np.abs(est - mixes[vic]).mean() > 0.7 * uniform_mix_error(mixes[vic])
