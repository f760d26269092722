"""A simulated scanner: degrade clean images with a SPEC and keep a JSON record of what was done.

``festa restore degrade`` and the restoration benchmark both call :func:`degrade`, so one SPEC
means one scanner everywhere. Each image gets its own noise seed, derived from the run's seed and
the image's name (:func:`image_seed`), so an image's observation does not depend on which other
images are in the folder. A blind blur (``blur:unknown``) draws its kernel from the same
generator family as the kernel prior's training data (:func:`random_kernel`); the record keeps it.

The record (``<stem>.json`` beside the 16-bit PNG) round-trips: :func:`replay` rebuilds the exact
observation from it and the clean image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from festa.client.restoration.errors import DegradationSpecError
from festa.client.restoration.operators import Degradation, parse_spec, random_kernel

PNG_SCALE = 65535  # 16-bit PNG: stored = round(clip(y, 0, 1) * 65535)


def image_seed(seed: int, name: str) -> int:
    """The noise (and blind-kernel) seed of image ``name`` in a run seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def describe(deg: Degradation) -> list[dict[str, Any]]:
    """The terms of a parsed SPEC with every parameter spelled out, in application order."""
    terms = []
    for term in deg.spec.split("+"):
        parts = term.split(":")
        family, kind, rest = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
        params: dict[str, Any] = {}
        if family == "sr":
            params["factor"], kind = int(kind), "downsample"
        for item in filter(None, ":".join(rest).split(",")):
            key, _, val = item.partition("=")
            try:
                params[key] = float(val)
            except ValueError:
                params[key] = val
        terms.append({"term": term, "family": family, "kind": kind, "params": params})
    return terms


@dataclass
class Scanned:
    """One degraded image: the observation ``[h, w]`` (float, unclipped) and its record."""

    y: np.ndarray
    record: dict[str, Any]


def _simulate(deg: Degradation, image: np.ndarray, seed: int, kernel: np.ndarray | None):
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if kernel is not None:
        deg = deg.with_kernel(torch.from_numpy(kernel).float()[None, None])
    return deg.simulate(x, seed=seed)[0, 0].numpy()


def degrade(image: np.ndarray, spec: str, seed: int, name: str = "") -> Scanned:
    """Degrade one clean image ``[H, W]`` in [0, 1] with SPEC; ``name`` (the file name) picks
    the per-image seed. Raises :class:`DegradationSpecError` for a bad SPEC or an image the
    operator cannot take (e.g. a side that is not a multiple of the sr factor)."""
    deg = parse_spec(spec)
    if image.ndim != 2:
        raise DegradationSpecError(f"expected a grey image [H, W], got shape {image.shape}")
    s = image_seed(seed, name)
    kernel = None
    if deg.blind:
        kernel = random_kernel(np.random.default_rng(s), deg.kernel_size()).numpy()
    y = _simulate(deg, image, s, kernel)
    record: dict[str, Any] = {
        "spec": deg.spec,
        "spec_given": spec,
        "terms": describe(deg),
        "seed": seed,
        "name": name,
        "image_seed": s,
        "input_hw": list(image.shape),
        "output_hw": list(y.shape),
        "png": f"uint16 = round(clip(y, 0, 1) * {PNG_SCALE})",
        "clipped_fraction": float(((y < 0) | (y > 1)).mean()),
    }
    if kernel is not None:
        record["kernel"] = kernel.astype(float).tolist()  # the exact float32 values
    return Scanned(y, record)


def replay(record: dict[str, Any], image: np.ndarray) -> np.ndarray:
    """The observation a :func:`degrade` record describes, recomputed from the clean image."""
    deg = parse_spec(record["spec"])
    if parse_spec(record["spec_given"]).spec != deg.spec:
        raise DegradationSpecError("record's spec and spec_given disagree")
    if image_seed(record["seed"], record["name"]) != record["image_seed"]:
        raise DegradationSpecError("record's image_seed does not follow from its seed and name")
    kernel = np.asarray(record["kernel"], dtype=np.float32) if deg.blind else None
    return _simulate(deg, image, record["image_seed"], kernel)


def to_png16(y: np.ndarray) -> np.ndarray:
    """An observation as the uint16 array written to its PNG."""
    return np.round(np.clip(y, 0, 1) * PNG_SCALE).astype(np.uint16)
