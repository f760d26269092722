"""Fixtures every test area shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from festa.shared.runtime import configure_process

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach for a model hub, and run one torch thread per process: tests start several
# processes (servers, clients) on two cores, and OpenMP spin-waiting under oversubscription is
# ~10x slower than single-threaded kernels here.
configure_process(threads=1)


def _cxr_open_dir() -> Path | None:
    env = os.environ.get("FESTA_CXR_OPEN")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "cxr-open")
    for path in candidates:
        if (path / "manifest.csv").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def cxr_open_dir() -> Path:
    """The real open CXR set beside the checkout (`../shared/data/cxr-open`)."""
    path = _cxr_open_dir()
    if path is None:
        pytest.skip(
            "cxr-open data not found: expected ../shared/data/cxr-open beside the checkout "
            "or FESTA_CXR_OPEN pointing at it"
        )
    return path


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
