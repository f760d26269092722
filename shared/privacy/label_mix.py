"""A site's label mix from its tail-bias update (what FedAvg shows the server every round)."""

from __future__ import annotations

import numpy as np


def label_mix_attack(
    calibration_updates: np.ndarray, calibration_mixes: np.ndarray, victim_updates: np.ndarray
) -> np.ndarray:
    """Estimate each victim's label proportions `[V, C]` from its tail-bias update `[V, C]`.

    The server calibrates a linear map bias update -> proportions on rounds it ran itself on
    public data with known mixes (`calibration_updates` `[K, C]`, `calibration_mixes` `[K, C]`);
    estimates are clipped at 0 and renormalised to sum to 1.
    """
    from sklearn.linear_model import Ridge

    reg = Ridge(alpha=1e-6).fit(calibration_updates, calibration_mixes)
    est = reg.predict(victim_updates).clip(0, None)
    return est / np.maximum(est.sum(axis=1, keepdims=True), 1e-12)
