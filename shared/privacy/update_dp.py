"""Differential privacy for the head/tail update a site sends at the end of a round (issue 15 item 5).

Each site clips its update `new - received` to L2 norm `clip` (Flower's FlatClip,
`flwr.supercore.differential_privacy.compute_clip_model_update`) and adds Gaussian noise of std
`noise_multiplier * clip` to every float entry (`compute_stdv` / `add_gaussian_noise_inplace`,
the same helpers Flower's client-side fixed-clipping mod uses) before the update leaves the
site, with or without secure aggregation. This is local DP at site level: the unit protected is a
site's whole dataset, and the guarantee holds against a server that saw each site's update, so
secure aggregation only adds to it. One round is a Gaussian mechanism of sensitivity `clip`
and noise multiplier `z`; `rounds` of them compose by Renyi DP to `gaussian_epsilon` (no
subsampling: every site takes part in every round).

Flower's noise draws from numpy's global generator (not seeded by festa): a DP mechanism's noise
must not be predictable, and runs with DP on are reproducible only up to that noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.supercore.differential_privacy import (
    add_gaussian_noise_inplace,
    compute_clip_model_update,
    compute_stdv,
    get_norm,
)

if TYPE_CHECKING:
    from festa.shared.config import FederationConfig

# Renyi orders searched for the tightest epsilon (alpha in (1, 1000]).
RDP_ORDERS = tuple(1 + x / 10 for x in range(1, 100)) + tuple(float(a) for a in range(11, 1001))


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    """(epsilon, delta)-DP epsilon of `rounds` Gaussian mechanisms of noise multiplier `z`
    (std / sensitivity): RDP of order a is a / (2 z^2) per release (Mironov 2017), composed
    additively, converted with eps = rdp + log(1/delta) / (a - 1). inf when off."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if noise_multiplier < 0 or rounds < 0:
        raise ValueError(
            f"noise multiplier and rounds must be >= 0, got {noise_multiplier}, {rounds}"
        )
    if noise_multiplier == 0:
        return math.inf
    if rounds == 0:
        return 0.0
    return min(
        rounds * a / (2 * noise_multiplier**2) + math.log(1 / delta) / (a - 1) for a in RDP_ORDERS
    )


def privatize_update(
    new: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
    clip: float,
    noise_multiplier: float,
) -> tuple[dict[str, torch.Tensor], float]:
    """`received` + the clipped, noised update `new - received` of every float tensor (other
    entries, e.g. integer counters, pass as `new` has them), and the update's norm before
    clipping. Keys and shapes must match."""
    if clip <= 0:
        raise ValueError(f"DP clipping norm must be > 0, got {clip}")
    if noise_multiplier < 0:
        raise ValueError(f"DP noise multiplier must be >= 0, got {noise_multiplier}")
    if set(new) != set(received):
        raise ValueError(
            f"update and received state differ in keys: {sorted(set(new) ^ set(received))}"
        )
    keys = [k for k, v in new.items() if torch.is_floating_point(v)]
    for k in keys:
        if new[k].shape != received[k].shape:
            raise ValueError(f"{k}: shape {tuple(new[k].shape)} vs {tuple(received[k].shape)}")
    after = [new[k].detach().cpu().double().numpy().copy() for k in keys]
    before = [received[k].detach().cpu().double().numpy() for k in keys]
    norm = get_norm([a - b for a, b in zip(after, before, strict=True)])
    if norm > 0:  # Flower's FlatClip divides by the norm; a zero update needs no clipping
        compute_clip_model_update(after, before, clip)  # after = before + clipped update
    if noise_multiplier > 0:
        add_gaussian_noise_inplace(after, compute_stdv(noise_multiplier, clip, 1))
    out = dict(new)
    for k, a in zip(keys, after, strict=True):
        out[k] = torch.from_numpy(np.asarray(a)).to(new[k].dtype)
    return out, norm


def update_dp_spent(cfg: FederationConfig, rounds: int) -> dict[str, float]:
    """What a run with `cfg.dp_noise` > 0 spent after `rounds` rounds, per site (its summary's `dp`)."""
    return {
        "noise_multiplier": cfg.dp_noise,
        "clip": cfg.dp_clip,
        "delta": cfg.dp_delta,
        "rounds": rounds,
        "epsilon": gaussian_epsilon(cfg.dp_noise, rounds, cfg.dp_delta),
    }
