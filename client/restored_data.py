"""Simulated scanners and the restoration service in the training data path (`--restore`).

In a simulation every odd-numbered site gets a degraded "scanner" (by default low dose, or blur
plus noise, alternating); even-numbered sites image cleanly. `FederationConfig.scanners` picks
harsher scanners (a `SCANNER_SETS` name or one degradation SPEC) and `degraded_sites` degrades
every site instead of half. A degraded site's training images are its acquisitions; with
restoration on, the site's restoration engine cleans them before training. The acquisitions
themselves are never altered: restored images are new arrays, each with its provenance record,
and an image whose restoration fails falls back to the acquisition with the reason logged and
counted as quarantined.

Restorations are cached on disk by content hash, so a rerun of the same federation does not
restore again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from festa.client.site_data import SiteData
from festa.shared.config import FederationConfig
from festa.shared.data.datasets import CXRDataset

log = logging.getLogger(__name__)

LOW_DOSE = "noise:poisson:dose=200,read=0.01"  # low-dose acquisition
BLUR = "blur:gauss:sigma=2+noise:gauss:sigma=0.01"  # defocused detector
LOW_DOSE_50 = "noise:poisson:dose=50,read=0.01"  # a quarter of LOW_DOSE's photons
BLUR_3 = "blur:gauss:sigma=3+noise:gauss:sigma=0.01"
# The scanners degraded sites get, in turn; phantom64 has a CDDB bridge and a GCTM model for each.
SCANNER_SETS: dict[str, tuple[str, ...]] = {
    "default": (LOW_DOSE, BLUR),
    "lowdose50": (LOW_DOSE_50,),
    "blur3": (BLUR_3,),
}
DEGRADED_SITES = ("half", "all")  # FederationConfig.degraded_sites
SOLVER_SPEC = {  # blinddps estimates the blur kernel itself
    "blinddps": {b: "blur:unknown+noise:gauss:sigma=0.01" for b in (BLUR, BLUR_3)}
}


def scanner_specs(scanners: str) -> tuple[str, ...]:
    """The degradations of `scanners`: a `SCANNER_SETS` name, or one degradation SPEC."""
    if scanners in SCANNER_SETS:
        return SCANNER_SETS[scanners]
    from festa.client.restoration.operators import parse_spec

    try:
        parse_spec(scanners)
    except ValueError as exc:
        raise ValueError(
            f"scanners {scanners!r} is neither one of {sorted(SCANNER_SETS)} nor a SPEC: {exc}"
        ) from exc
    return (scanners,)


def site_scanner(
    site_index: int, scanners: str = "default", degraded_sites: str = "half"
) -> str | None:
    """The degradation of simulated site `site_index` (None for a clean scanner): `scanners` is
    a `SCANNER_SETS` name or a degradation SPEC (see `scanner_specs`), `degraded_sites` is
    ``half`` (the odd-numbered sites) or ``all``."""
    specs = scanner_specs(scanners)
    if degraded_sites not in DEGRADED_SITES:
        raise ValueError(f"degraded sites must be one of {DEGRADED_SITES}, got {degraded_sites!r}")
    if degraded_sites == "half" and site_index % 2 == 0:
        return None
    return specs[(site_index // 2) % len(specs)]


def with_scanner(cfg: FederationConfig, site: SiteData, site_index: int) -> SiteData:
    """`site` with its training images as its scanner acquires them, restored if configured."""
    counts = {"restored": 0, "pending": 0, "quarantined": 0, "degraded": 0}
    degraded = cfg.degrade != "none"
    spec = site_scanner(site_index, cfg.scanners, cfg.degraded_sites) if degraded else None
    if spec is None:
        return replace(site, restoration=counts)
    idx = site.train_indices
    clean = torch.stack([site.train[int(i)]["image"] for i in idx])  # [n, 1, H, W]
    from festa.client.restoration.operators import parse_spec

    acquired = parse_spec(spec).simulate(clean, seed=cfg.seed + site_index).clamp(0, 1)
    counts["degraded"] = len(idx)
    images = acquired[:, 0].numpy()
    provenance: list[dict[str, Any] | None] = [None] * len(idx)
    if cfg.restore != "none":
        real = (
            len(idx) > 0 and "path" in site.train[int(idx[0])]
        )  # manifest-folder samples name their file
        images, provenance, counts = _restore(cfg, images, spec, counts, real)
    samples = []
    for k, i in enumerate(idx):
        sample = dict(site.train[int(i)])  # a copy: the pooled dataset is shared by virtual clients
        sample["image"] = torch.from_numpy(np.ascontiguousarray(images[k])).unsqueeze(0)
        sample["acquisition"] = spec
        sample["provenance"] = provenance[k]
        samples.append(sample)
    train = CXRDataset(samples, site.train.class_names, site.train.box_class_names)
    return replace(site, train=train, train_indices=np.arange(len(samples)), restoration=counts)


def _restore(
    cfg: FederationConfig, acquired: np.ndarray, spec: str, counts: dict[str, int], real: bool
):
    """Restore a degraded site's images; default weights: cxr64 for real data, else phantom64."""
    from festa.client.restoration.committed_weights import default_model_dir
    from festa.client.restoration.restorer import Restorer

    solver_spec = SOLVER_SPEC.get(cfg.restore, {}).get(spec, spec)
    model_dir = Path(cfg.restore_model_dir) if cfg.restore_model_dir else default_model_dir(real)
    key = hashlib.sha256(
        acquired.tobytes()
        + json.dumps(
            [cfg.restore, cfg.restore_nfe, solver_spec, str(model_dir), cfg.seed, cfg.restore_fit]
        ).encode()
    ).hexdigest()[:24]
    cache = Path(cfg.restore_cache) / f"{key}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        provenance = json.loads(str(data["provenance"]))
        counts.update(json.loads(str(data["counts"])))
        return data["images"], provenance, counts

    restorer = Restorer(
        cfg.restore, model_dir, nfe=cfg.restore_nfe, device=cfg.device, fit=cfg.restore_fit
    )
    out = acquired.copy()
    provenance: list[dict[str, Any] | None] = [None] * len(acquired)
    batch = 32
    for start in range(0, len(acquired), batch):
        chunk = range(start, min(start + batch, len(acquired)))
        try:
            results = restorer.restore(
                acquired[chunk.start : chunk.stop], solver_spec, seed=cfg.seed + start
            )
        except Exception as exc:  # retry one by one so one bad image does not sink its batch
            log.warning("restoring batch at %d failed (%s); retrying image by image", start, exc)
            results = []
            for i in chunk:
                try:
                    results += restorer.restore(acquired[i : i + 1], solver_spec, seed=cfg.seed + i)
                except Exception as one_exc:
                    log.warning(
                        "image %d not restored, training on the acquisition: %s", i, one_exc
                    )
                    results.append(None)
        for i, res in zip(chunk, results, strict=True):
            if res is None or not np.isfinite(res.image).all():
                counts["quarantined"] += 1
                continue
            out[i] = np.clip(res.image, 0, 1)
            provenance[i] = res.provenance
            counts["restored"] += 1
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=out, provenance=json.dumps(provenance), counts=json.dumps(counts))
    tmp.replace(cache)
    return out, provenance, counts


def from_site_daemon(site: SiteData, state_dir: str | Path, image_size: int) -> SiteData:
    """A deployed site's training images as its restoration daemon restored them.

    Each sample whose original file the daemon restored is replaced by the restored image
    (with its provenance); any other keeps the original, with the daemon's reason logged.
    """
    from festa.client.service.restored_index import RestoredIndex
    from festa.shared.data.datasets import resize
    from festa.shared.data.imageio import ImageReadError, read_image

    index = RestoredIndex(state_dir)
    samples, fallbacks = [], 0
    for i in site.train_indices:
        sample = dict(site.train[int(i)])
        found = index.lookup(sample["path"]) if "path" in sample else None
        if found is None:
            fallbacks += 1
            log.info(
                "training on the original %s: %s",
                sample.get("path"),
                index.why_not(sample.get("path", "")),
            )
        else:
            png, provenance = found
            try:
                image = resize(read_image(png), image_size)
            except ImageReadError as exc:
                log.warning(
                    "restored %s unreadable (%s); training on the original", png, exc.reason
                )
                fallbacks += 1
            else:
                sample["image"] = torch.from_numpy(image).unsqueeze(0)
                sample["provenance"] = provenance
        samples.append(sample)
    counts = {k: int(v) for k, v in index.counts().items()}
    counts["fallback"] = fallbacks
    train = CXRDataset(
        samples, site.train.class_names, site.train.box_class_names, site.train.skipped
    )
    return replace(site, train=train, train_indices=np.arange(len(samples)), restoration=counts)
