"""Procedural chest-radiograph phantoms: festa's embedded, deterministic default data.

Each phantom is a frontal CXR-like image (bright = attenuating, as on a radiograph display):
soft-tissue body, two dark lung fields, ribs, clavicles, mediastinum, heart and diaphragm
domes, with one of three findings that sets the class label:

- ``normal``: no finding;
- ``focal-opacity``: one bright round lesion inside a lung (its box is a detection target);
- ``diffuse-haze``: bilateral, lower-zone raised density.

Every phantom also carries its lung mask and boxes (both lungs, plus the lesion if any).
Phantom ``i`` of seed ``s`` is the same whatever else is generated, so datasets are stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("normal", "focal-opacity", "diffuse-haze")
BOX_CLASS_NAMES: tuple[str, ...] = ("lung", "lesion")
LUNG, LESION = 0, 1


@dataclass
class Phantom:
    image: np.ndarray  # float32 [H, W] in [0, 1]
    label: int  # index into CLASS_NAMES
    mask: np.ndarray  # uint8 [H, W], 1 = lung
    boxes: np.ndarray  # float32 [K, 4], x0 y0 x1 y1 in pixels (x1/y1 exclusive)
    box_labels: np.ndarray  # int64 [K], index into BOX_CLASS_NAMES


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], shape [size, size] each (y, x)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _ellipse(y, x, cy, cx, ry, rx, angle=0.0):
    """Normalised squared radius of an (optionally rotated) ellipse; < 1 inside."""
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u = (dx * ca + dy * sa) / rx
    v = (-dx * sa + dy * ca) / ry
    return u * u + v * v


def _soft(r2, edge=0.08):
    """Soft inside-indicator of a normalised radius map (1 inside, 0 outside)."""
    return np.clip((1.0 - r2) / edge, 0.0, 1.0)


def make_phantom(index: int, size: int = 64, seed: int = 0) -> Phantom:
    """Phantom number `index` of the set `seed`, rendered at `size` x `size` pixels."""
    rng = np.random.default_rng([seed, index])
    y, x = _grid(size)
    label = int(rng.integers(len(CLASS_NAMES)))

    # Body outline and soft tissue.
    body = _soft(_ellipse(y, x, 0.62, 0.5, 0.6, rng.uniform(0.5, 0.56)), 0.15)
    img = 0.25 + 0.35 * body

    # Lung fields: patient's right lung on the image left, as on a standard PA view.
    tilt = rng.uniform(-0.08, 0.08)
    lung_h = rng.uniform(0.26, 0.32)
    lung_w = rng.uniform(0.13, 0.16)
    cy = rng.uniform(0.45, 0.52)
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        r2 = _ellipse(
            y, x, cy, cx, lung_h, lung_w * (1.0 if side < 0 else 0.92), side * 0.12 + tilt
        )
        # Flatten the lung base into a diaphragm dome.
        dome = y > cy + lung_h * (0.75 - 0.6 * ((x - cx) / lung_w) ** 2)
        lungs.append((r2 < 1.0) & ~dome)
    lung_mask = lungs[0] | lungs[1]
    lung_soft = _smooth(lung_mask.astype(np.float32))
    img = img - 0.3 * lung_soft

    # Ribs: bright curved bands over the lungs.
    n_ribs = 6
    phase = rng.uniform(0, 1)
    for k in range(n_ribs):
        ry = cy - lung_h + (k + phase * 0.3) * (2 * lung_h / n_ribs)
        curve = ry + 0.12 * (x - 0.5) ** 2 * 4 + 0.02 * np.abs(x - 0.5)
        band = np.exp(-(((y - curve) / 0.012) ** 2))
        img = img + 0.08 * band * lung_soft

    # Clavicles.
    for side in (-1, 1):
        r2 = _ellipse(y, x, cy - lung_h - 0.02, 0.5 + side * 0.2, 0.015, 0.17, side * -0.25)
        img = img + 0.12 * _soft(r2, 0.5)

    # Mediastinum and heart (bulging to the image right, the patient's left).
    img = img + 0.25 * _soft(_ellipse(y, x, 0.45, 0.5, 0.4, 0.055), 0.4)
    heart = _soft(
        _ellipse(y, x, cy + 0.12, 0.54, rng.uniform(0.13, 0.16), rng.uniform(0.14, 0.18), 0.3), 0.3
    )
    img = img + 0.22 * heart

    boxes = [_mask_box(lung) for lung in lungs]
    box_labels = [LUNG, LUNG]

    if label == 1:  # focal opacity inside one lung
        lung = lungs[int(rng.integers(2))]
        ys, xs = np.nonzero(lung)
        pick = int(rng.integers(len(ys)))
        ly, lx = (ys[pick] + 0.5) / size, (xs[pick] + 0.5) / size
        rad = rng.uniform(0.05, 0.09)
        lesion = np.exp(-_ellipse(y, x, ly, lx, rad, rad * rng.uniform(0.8, 1.2)) * 2.0)
        img = img + rng.uniform(0.25, 0.4) * lesion
        boxes.append(_clip_box(np.array([lx - rad, ly - rad, lx + rad, ly + rad]) * size, size))
        box_labels.append(LESION)
    elif label == 2:  # diffuse bilateral lower-zone haze
        gradient = np.clip((y - (cy - 0.2)) / 0.35, 0, 1)
        img = img + rng.uniform(0.15, 0.22) * lung_soft * gradient

    # Exposure, contrast and a little quantum noise.
    img = (img - 0.2) * rng.uniform(0.9, 1.15) + rng.uniform(-0.04, 0.04)
    img = img + rng.normal(0, 0.015, size=img.shape)
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    return Phantom(
        image=image,
        label=label,
        mask=lung_mask.astype(np.uint8),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_labels=np.asarray(box_labels, dtype=np.int64),
    )


def _smooth(a: np.ndarray) -> np.ndarray:
    """3x3 box blur (edge-padded), to soften the lung borders."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _clip_box(box: np.ndarray, size: int) -> np.ndarray:
    return np.clip(box, 0, size).astype(np.float32)


def phantom_images(
    n: int, size: int = 64, seed: int = 0, lesion_share: float | None = None
) -> np.ndarray:
    """`n` phantom images, float32 `[n, size, size]` in [0, 1].

    `lesion_share`: the fraction of them that carry a focal lesion (the first phantoms of
    `seed` with and without one, in index order); None keeps the generator's own mix (about a
    third). Restoration models trained with a higher share keep more of the lesions
    (``bench_lesion_fidelity``)."""
    if lesion_share is None:
        return np.stack([make_phantom(i, size, seed).image for i in range(n)])
    if not 0.0 <= lesion_share <= 1.0:
        raise ValueError(f"lesion_share must lie in [0, 1], got {lesion_share}")
    want = {True: round(n * lesion_share)}
    want[False] = n - want[True]
    picked: dict[bool, list[np.ndarray]] = {True: [], False: []}
    i = 0
    while len(picked[True]) < want[True] or len(picked[False]) < want[False]:
        p = make_phantom(i, size, seed)
        has = bool((p.box_labels == LESION).any())
        if len(picked[has]) < want[has]:
            picked[has].append(p.image)
        i += 1
    return np.stack(picked[True] + picked[False])
