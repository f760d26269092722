"""The privacy attacks (simulations/bench_privacy.py) at a micro size: they run on the real
client path, give finite scores and a figure, and the gradient attack recovers known labels."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from rich.progress import Progress

from festa.shared.config import FederationConfig, ModelConfig
from festa.shared.data.datasets import phantom_dataset
from festa.shared.model import Body
from festa.shared.tasks import get_task
from festa.shared.train.task_model import TaskModel
from festa.simulations.bench_privacy import (
    Trained,
    _images,
    cluster_gradients,
    infer_labels_from_gradients,
    inversion_rows,
    leakage_rows,
    matched_accuracy,
    save_figure,
    train_position_classifier,
    unshuffle_by_position,
)

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def _trained(noise: float) -> Trained:
    cfg = FederationConfig(
        model=CFG,
        tasks=["classification", "segmentation"],
        clients=2,
        partition="iid",
        rounds=1,
        local_steps=2,
        token_noise=noise,
        data={"train_size": 80, "val_size": 16},
        optim={"batch_size": 8},
    )
    torch.manual_seed(0)
    averaged = {t: TaskModel.build(t, CFG).state_dict() for t in cfg.tasks}
    victim = TaskModel.build("classification", CFG)
    victim.load_state_dict(averaged["classification"])
    return Trained(cfg, {}, Body(CFG).eval(), averaged, victim, "client-0")


def test_attack_pipeline_runs_end_to_end(tmp_path):
    args = argparse.Namespace(
        figure_images=3, seed=0, epochs=1, position_epochs=1, skew_sites=2, calibration_sites=3
    )
    models = {0.0: _trained(0.0), 0.5: _trained(0.5)}
    public_ds = phantom_dataset(48, 32, seed=99)
    public, victim = _images(public_ds), _images(phantom_dataset(8, 32, seed=0))
    with Progress(disable=True) as progress:
        rows = inversion_rows(models, public, victim, args, progress)
    assert len(rows) == 7  # mean, fp32, drifted, permute naive/adaptive, int8, one noise level
    for row in rows:
        assert np.isfinite(row.psnr) and np.isfinite(row.ssim) and -1 <= row.ssim <= 1
        assert row.recon.shape == (3, 1, 32, 32)
    figure = tmp_path / "privacy.png"
    save_figure(victim, rows, figure)
    assert figure.stat().st_size > 1000
    leaks = leakage_rows(models[0.0], public_ds, args)
    assert len(leaks) == 5 and all(len(r) == 4 for r in leaks)


def test_gradient_matching_recovers_known_labels():
    torch.manual_seed(1)
    task = get_task("classification")
    tail = task.build_tail(CFG)
    body_out = torch.randn(12, CFG.num_tokens, CFG.embed_dim)
    labels = torch.tensor([0, 1, 2] * 4)
    out = body_out.clone().requires_grad_(True)
    task.loss(tail(out), {"label": labels}).backward()
    guessed = infer_labels_from_gradients(tail, task.loss, body_out, out.grad, CFG.num_classes)
    assert torch.equal(guessed, labels)
    # Wrong labels in the gradient -> the attack reports those, not the true ones.
    out = body_out.clone().requires_grad_(True)
    task.loss(tail(out), {"label": (labels + 1) % 3}).backward()
    guessed = infer_labels_from_gradients(tail, task.loss, body_out, out.grad, CFG.num_classes)
    assert torch.equal(guessed, (labels + 1) % 3)


def test_clustering_and_label_mapping():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels, 3) == 1.0
    assert matched_accuracy(np.array([0, 1, 0, 1, 0, 1]), labels, 3) == pytest.approx(2 / 6)
    # Three well-separated gradient directions cluster perfectly.
    torch.manual_seed(2)
    dirs = torch.eye(3, 16) * 5
    grads = torch.stack([dirs[y] + 0.1 * torch.randn(16) for y in labels.tolist()])
    clusters = cluster_gradients(grads[:, None, :].expand(-1, 4, -1).contiguous(), 3)
    assert matched_accuracy(clusters, labels, 3) == 1.0


def test_position_embedding_lets_an_attacker_undo_the_shuffle():
    """Tokens = strong position code + content: the classifier + Hungarian put them back."""
    torch.manual_seed(3)
    pos = torch.randn(1, CFG.num_tokens, CFG.embed_dim)
    tokens = pos + 0.3 * torch.randn(64, CFG.num_tokens, CFG.embed_dim)
    clf = train_position_classifier(CFG, tokens, epochs=20)
    victim = pos + 0.3 * torch.randn(4, CFG.num_tokens, CFG.embed_dim)
    perm = torch.randperm(CFG.num_tokens)
    restored = unshuffle_by_position(clf, victim[:, perm])
    assert torch.equal(restored, victim)
