"""The restoration benchmark's deepinv side: deepinv physics equal festa's operators, and
festa's prior wrapped as a deepinv denoiser is the prior's own x0 prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from festa.client.restoration.models import load_prior
from festa.client.restoration.operators import parse_spec
from festa.simulations.restoration_baselines import FestaPriorDenoiser, deepinv_physics

PHANTOM_PRIOR = Path(__file__).resolve().parents[2] / "client/restoration/weights/phantom64/prior"


@pytest.mark.parametrize(
    "spec",
    [
        "blur:gauss:sigma=2",
        "blur:motion:length=5,angle=30",
        "sr:2",
        "inpaint:box",
        "noise:gauss:sigma=0.01",
    ],
)
def test_deepinv_physics_equals_the_festa_operator(spec: str) -> None:
    deg = parse_spec(spec)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    physics = deepinv_physics(deg, (32, 32), sigma=0.01)
    assert torch.allclose(physics.A(x), deg.A(x), atol=1e-5)


def test_wrapped_prior_denoises_with_the_prior_at_the_matching_timestep() -> None:
    prior = load_prior(PHANTOM_PRIOR)
    den = FestaPriorDenoiser(prior)
    t = 300
    abar = float(prior.alphas_cumprod[t])
    sigma = ((1 - abar) / abar) ** 0.5 / 2  # the [0, 1]-scale noise level of timestep t
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = (prior.predict_x0(abar**0.5 * (2 * x - 1), t).clamp(-1, 1) + 1) / 2
    assert torch.allclose(den(x, sigma), expected, atol=1e-4)
