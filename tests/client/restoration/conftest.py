"""Tiny 32-px models trained for a few steps by festa's own training code, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from festa.client.restoration.operators import parse_spec
from festa.client.restoration.training import (
    TrainConfig,
    train_bridge,
    train_kernel_prior,
    train_prior,
)

TINY_BRIDGE_SPEC = "blur:gauss:sigma=1+noise:gauss:sigma=0.01"
TINY_BLIND_SPEC = "blur:unknown+noise:gauss:sigma=0.01"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder (prior/, kernel_prior/, bridges/blur1/, bridges/blind/) of tiny UNets,
    32 px."""
    root = tmp_path_factory.mktemp("restoration-models")
    cfg = TrainConfig(steps=4, batch=4, checkpoint_every=2, n_phantoms=32)
    train_prior("phantoms", 32, root / "prior", cfg, preset="tiny")
    train_kernel_prior(root / "kernel_prior", cfg, size=16)
    train_bridge(
        parse_spec(TINY_BRIDGE_SPEC),
        "phantoms",
        32,
        root / "bridges" / "blur1",
        cfg,
        preset="tiny",
        init_from=root / "prior",
    )
    train_bridge(
        parse_spec(TINY_BLIND_SPEC), "phantoms", 32, root / "bridges" / "blind", cfg, "tiny"
    )
    return root
