"""The committed phantom64 weights load on CPU and restore a held-out phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from festa.client.restoration.operators import parse_spec
from festa.client.restoration.restorer import Restorer
from festa.shared.data.phantoms import phantom_images

WEIGHTS = Path(__file__).resolve().parents[3] / "client" / "restoration" / "weights" / "phantom64"


def test_committed_low_dose_bridge_denoises_a_held_out_phantom() -> None:
    spec = "noise:poisson:dose=200,read=0.01"
    clean = phantom_images(1, size=64, seed=4242)
    y = parse_spec(spec).simulate(torch.from_numpy(clean)[:, None], seed=0)[:, 0].numpy()
    (out,) = Restorer("cddb", WEIGHTS, nfe=5).restore(y, spec)
    assert out.image.shape == (64, 64) and np.isfinite(out.image).all()
    before = peak_signal_noise_ratio(clean[0], np.clip(y[0], 0, 1), data_range=1)
    after = peak_signal_noise_ratio(clean[0], out.image, data_range=1)
    assert after > before + 1.0, (before, after)
    assert out.provenance["model_id"] == "phantom64/bridges/lowdose"
