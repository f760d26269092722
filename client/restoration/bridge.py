"""The I2SB-style diffusion bridge CDDB runs on: a Brownian bridge from clean ``x0`` (t = 0)
to the degraded, lifted observation ``x1`` (t = 1), with a symmetric beta schedule.

With ``s2(t) = sum_{i<=t} beta_i`` (variance from x0) and ``b2(t) = sum_{i>t} beta_i`` (to x1), the
marginal is ``x_t ~ N(b2/(s2+b2) x0 + s2/(s2+b2) x1, s2 b2/(s2+b2))`` and the network predicts
``(x_t - x0) / sqrt(s2(t))``. Tensors are ``[B, 1, H, W]`` in the model's [-1, 1] scale.
"""

from __future__ import annotations

from typing import Any

import torch


class BridgeSchedule:
    """Discrete symmetric schedule of ``n`` steps (I2SB's: sqrt-linear betas, mirrored)."""

    def __init__(self, n: int = 1000, beta_min: float = 1e-4, beta_max: float = 0.3) -> None:
        self.n, self.beta_min, self.beta_max = n, beta_min, beta_max
        half = (
            torch.linspace(beta_min**0.5, (beta_max / n) ** 0.5, n // 2, dtype=torch.float64) ** 2
        )
        betas = torch.cat([half, half.flip(0)])
        self.var_fwd = betas.cumsum(0)  # s2(t)
        self.var_bwd = (betas.sum() - self.var_fwd).clamp_min(0)  # b2(t); exactly 0 at t = n - 1
        self.std_fwd = self.var_fwd.sqrt().float()

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "beta_min": self.beta_min, "beta_max": self.beta_max}

    def q_sample(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        t: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``x_t`` of the bridge between ``x0`` and ``x1`` at integer times ``t`` ``[B]``."""
        s2, b2 = self.var_fwd[t].float(), self.var_bwd[t].float()
        shape = (-1, 1, 1, 1)
        mean = (b2 / (s2 + b2)).view(shape) * x0 + (s2 / (s2 + b2)).view(shape) * x1
        std = (s2 * b2 / (s2 + b2)).sqrt().view(shape)
        return mean + std * torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, s: int, t: int, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Sample ``x_s`` given ``x0`` and ``x_t`` (s < t): a Brownian-bridge step back."""
        vs, vt = float(self.var_fwd[s]), float(self.var_fwd[t])
        mean = (1 - vs / vt) * x0 + (vs / vt) * xt
        if noise is None:
            return mean
        return mean + (vs * (vt - vs) / vt) ** 0.5 * noise

    def timesteps(self, nfe: int) -> list[int]:
        """``nfe + 1`` decreasing integer times from ``n - 1`` to 0."""
        ts = torch.linspace(self.n - 1, 0, nfe + 1).round().long().tolist()
        return list(dict.fromkeys(ts))
