"""The privacy benchmark (simulations/bench_privacy.py) at a micro size: every attack runs on
the real client path and gives finite scores, its tables have their rows, and a figure is
written. The attacks themselves are tested in tests/shared/privacy."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from rich.progress import Progress

from festa.shared.config import FederationConfig, ModelConfig
from festa.shared.data.datasets import phantom_dataset
from festa.shared.model import Body
from festa.shared.train.task_model import TaskModel
from festa.simulations.bench_privacy import (
    Attack,
    Trained,
    _images,
    inversion_rows,
    leakage_rows,
    position_rows,
    save_figure,
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
        figure_images=3,
        seed=0,
        epochs=2,
        patience=1,
        position_epochs=1,
        skew_sites=2,
        calibration_sites=3,
        victim_batch=4,
    )
    models = {0.0: _trained(0.0), 0.5: _trained(0.5)}
    public_ds = phantom_dataset(48, 32, seed=99)
    public, victim = _images(public_ds), _images(phantom_dataset(8, 32, seed=0))
    with Progress(disable=True) as progress:
        attack = Attack(models, public, victim, args, progress)
        rows = inversion_rows(attack)
        positions = position_rows(attack)
    assert len(rows) == 7  # mean, fp32, drifted, permute naive/adaptive, int8, one noise level
    for row in rows:
        assert np.isfinite(row.psnr) and np.isfinite(row.ssim) and -1 <= row.ssim <= 1
        assert row.recon.shape == (3, 1, 32, 32)
    # as sent, one noise level, content only, secret code; each with both placement scores
    assert len(positions) == 4 and all(len(r) == 5 for r in positions)
    figure = tmp_path / "privacy.png"
    save_figure(victim, rows, figure)
    assert figure.stat().st_size > 1000
    leaks = leakage_rows(models[0.0], public_ds, args)
    assert len(leaks) == 7 and all(len(r) == 4 for r in leaks)
