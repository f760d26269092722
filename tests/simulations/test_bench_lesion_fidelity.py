"""The lesion-fidelity benchmark's scores: a lesion painted over is seen as lost."""

from __future__ import annotations

import numpy as np

from festa.simulations.bench_lesion_fidelity import _lesion_box, lesion_phantoms, lesion_scores


def test_a_lesion_painted_over_with_its_surroundings_loses_its_contrast():
    phantoms = lesion_phantoms(6)
    clean = np.stack([p.image for p in phantoms])
    same = lesion_scores(clean, clean, phantoms)
    assert same["contrast"] > 0.01 and same["err_lesion"] == same["err_lungs"] == 0.0
    painted = clean.copy()
    for im, p in zip(painted, phantoms, strict=True):
        x0, y0, x1, y1 = _lesion_box(p)
        im[y0:y1, x0:x1] = np.median(im[max(y0 - 4, 0) : y1 + 4, max(x0 - 4, 0) : x1 + 4])
    lost = lesion_scores(painted, clean, phantoms)
    assert lost["contrast"] < 0.5 * same["contrast"]
    assert lost["err_lesion"] < -0.005 and lost["err_lungs"] == 0.0
