"""The CDDB bridge schedule: endpoints, finiteness at every time, posterior consistency."""

from __future__ import annotations

import torch

from festa.client.restoration.bridge import BridgeSchedule


def test_bridge_marginals_are_finite_and_hit_their_endpoints() -> None:
    s = BridgeSchedule()
    x0, x1 = torch.zeros(s.n, 1, 8, 8), torch.ones(s.n, 1, 8, 8)
    xt = s.q_sample(x0, x1, torch.arange(s.n), torch.Generator().manual_seed(0))
    assert torch.isfinite(xt).all()
    assert torch.equal(xt[-1], x1[-1])  # t = n - 1 is exactly the degraded end
    assert (xt[0] - x0[0]).abs().max() < 0.05  # t = 0 is (almost) the clean end
    means = xt.mean(dim=(1, 2, 3))
    assert means[100] < means[500] < means[900]


def test_posterior_step_without_noise_interpolates_towards_x0() -> None:
    s = BridgeSchedule()
    x0, xt = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    xs = s.posterior(x0, xt, 200, 800, noise=None)
    expected = float(s.var_fwd[200] / s.var_fwd[800])
    assert torch.allclose(xs, torch.full_like(xs, expected))
    assert s.timesteps(20)[0] == s.n - 1 and s.timesteps(20)[-1] == 0 and len(s.timesteps(20)) == 21
