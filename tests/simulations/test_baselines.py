"""The baselines of the accuracy benchmark (local-only, whole-model FedAvg, pooled
centralized): they train the same sites as festa, and their exports load for `festa evaluate`."""

from __future__ import annotations

import pytest
import torch

from festa.shared.config import FederationConfig, ModelConfig
from festa.shared.data.datasets import load_dataset
from festa.shared.inference.evaluation import evaluate_model
from festa.shared.inference.export import load_exported
from festa.simulations.baselines import run_baseline

TASKS = ["classification", "segmentation"]


def tiny_config() -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "clients": 4,
            "rounds": 2,
            "local_steps": 3,
            "tasks": TASKS,
            "partition": "iid",
            "seed": 3,
            "degrade": "none",
            "restore": "none",
            "model": ModelConfig(
                image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
            ).model_dump(),
            "data": {"train_size": 64, "val_size": 16},
        }
    )


@pytest.mark.parametrize(
    ("kind", "exports"),
    [("local", 4), ("fedavg", 2), ("central", 1)],
)
def test_baseline_trains_every_task_and_exports_its_models(tmp_path, kind, exports):
    torch.set_num_threads(1)
    result = run_baseline(tiny_config(), kind, export_to=tmp_path)
    assert set(result["final"]) == set(TASKS)
    assert 0.0 <= result["final"]["segmentation"]["dice"] <= 1.0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == exports
    model = load_exported(folders[0])
    # local: one site's task; fedavg: one task (its own body); central: every task, one body
    assert len(model.tasks) == (len(TASKS) if kind == "central" else 1)
    val = load_dataset("phantoms", "val", 32, 16, 3)
    report = evaluate_model(model, val, bootstrap=5)
    assert report["tasks"], report


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="baseline kind"):
        run_baseline(tiny_config(), "gossip")
