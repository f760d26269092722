"""Federated averaging of state dicts (weighted by examples)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fedavg(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts with identical keys; integer buffers take the first state's."""
    if not states:
        raise ValueError("nothing to average")
    if len(states) != len(weights) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("need one non-negative weight per state, with a positive sum")
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys:
            raise ValueError("states to average have different keys")
    total = float(sum(weights))
    out = {}
    for key in keys:
        first = states[0][key]
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(first.dtype)
    return out
