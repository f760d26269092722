"""A site's label mix from its tail-bias update (what FedAvg shows the server every round)."""

from __future__ import annotations

import numpy as np


def label_mix_attack(
    calibration_updates: np.ndarray,
    calibration_mixes: np.ndarray,
    victim_updates: np.ndarray,
    alphas: np.ndarray | None = None,
) -> np.ndarray:
    """Estimate each victim's label proportions `[V, C]` from its tail-bias update `[V, C]`
    (or any update features `[V, F]`).

    The server calibrates a linear map update -> proportions on rounds it ran itself on
    public data with known mixes (`calibration_updates` `[K, F]`, `calibration_mixes` `[K, C]`);
    estimates are clipped at 0 and renormalised to sum to 1. With `alphas` the ridge penalty is
    picked among them by leave-one-out error on the calibration rounds (for F >> K, e.g. the
    tail's whole last layer), on standardised features.
    """
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if alphas is None:
        reg = Ridge(alpha=1e-6)
    else:
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
    reg.fit(calibration_updates, calibration_mixes)
    est = reg.predict(victim_updates).clip(0, None)
    return est / np.maximum(est.sum(axis=1, keepdims=True), 1e-12)
