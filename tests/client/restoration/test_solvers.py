"""DPS, CDDB, CDDB-deep and BlindDPS end to end on tiny 32-px models, through the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from festa.client.restoration import solvers
from festa.client.restoration.errors import (
    ModelDirError,
    RestorationInputError,
    UnsupportedMethodError,
)
from festa.client.restoration.models import load_bridge, load_prior
from festa.client.restoration.operators import parse_spec
from festa.client.restoration.restorer import Restorer
from festa.shared.data.phantoms import phantom_images
from tests.client.restoration.conftest import TINY_BLIND_SPEC, TINY_BRIDGE_SPEC

BLUR = "blur:gauss:sigma=1+noise:gauss:sigma=0.01"


def observe(spec: str, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(phantom_images(n, size=size, seed=7))[:, None]
    return x, parse_spec(spec).simulate(x, seed=1)


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for _ in range(n)]


@pytest.mark.parametrize("spec", [BLUR, "sr:2", "inpaint:box", "noise:poisson:dose=500,read=0.01"])
def test_dps_fits_the_data_better_than_the_unguided_sample(tiny_models: Path, spec: str) -> None:
    prior = load_prior(tiny_models / "prior")
    deg = parse_spec(spec)
    _, y = observe(spec)
    guided = solvers.dps(prior, deg, y, gens(2), nfe=8)
    free = solvers.dps(prior, deg, y, gens(2), nfe=8, zeta=0)
    assert guided.x.shape == (2, 1, 32, 32) and torch.isfinite(guided.x).all()
    assert (deg.residual(y, guided.x) < deg.residual(y, free.x)).all()


@pytest.mark.parametrize("deep", [False, True])
def test_cddb_fits_the_data_better_than_the_bare_bridge(tiny_models: Path, deep: bool) -> None:
    bridge = load_bridge(tiny_models / "bridges" / "blur1")
    deg = parse_spec(TINY_BRIDGE_SPEC)
    _, y = observe(TINY_BRIDGE_SPEC)
    dc = solvers.cddb(bridge, deg, y, gens(2), nfe=4, deep=deep)
    bare = solvers.cddb(bridge, deg, y, gens(2), nfe=4, deep=deep, step=0)
    assert dc.x.shape == (2, 1, 32, 32) and torch.isfinite(dc.x).all() and dc.nfe == 4
    assert (deg.residual(y, dc.x) < deg.residual(y, bare.x)).all()


def test_cddb_keeps_the_known_pixels_of_a_noise_free_observation(tiny_models: Path) -> None:
    """Noise-free inpainting: the default data-consistency step pastes the observed pixels back
    exactly; the partial step used for noisy scans does not."""
    bridge = load_bridge(tiny_models / "bridges" / "blur1")
    deg = parse_spec("inpaint:box")
    _, y = observe("inpaint:box")
    known = deg.operator.mask(y).bool().expand_as(y)
    full = solvers.cddb(bridge, deg, y, gens(2), nfe=2)
    partial = solvers.cddb(bridge, deg, y, gens(2), nfe=2, step=solvers.CDDB_ALPHA)
    assert full.params["step"] == 1.0
    assert torch.allclose(full.x[known], y[known], atol=1e-6)
    assert (partial.x[known] - y[known]).abs().max() > 1e-3
    assert solvers.cddb_alpha(parse_spec(TINY_BRIDGE_SPEC)) == solvers.CDDB_ALPHA


def test_the_final_fit_brings_back_a_lesion_that_the_estimate_smoothed_away() -> None:
    """A restoration that painted healthy lung over a lesion (the box filled with its ring's
    mean) is pulled back to the blurred scan: the lesion's contrast returns, the error falls."""
    from festa.shared.data.phantoms import LESION, make_phantom

    phantoms = [
        p for p in (make_phantom(i, 64, 4242) for i in range(40)) if (p.box_labels == LESION).any()
    ][:6]
    clean = torch.from_numpy(np.stack([p.image for p in phantoms]))[:, None]
    erased = clean.clone()
    boxes = []
    for k, p in enumerate(phantoms):
        x0, y0, x1, y1 = (
            int(round(float(v))) for v in p.boxes[int(np.argmax(p.box_labels == LESION))]
        )
        ring = clean[k, 0, max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3]
        erased[k, 0, y0:y1, x0:x1] = ring.median()
        boxes.append((x0, y0, x1, y1))
    deg = parse_spec("blur:gauss:sigma=3+noise:gauss:sigma=0.01")
    y = deg.simulate(clean, seed=0)
    pulled = solvers.final_fit(deg, y, erased, solvers.FINAL_FIT)

    def box_error(img: torch.Tensor) -> float:
        return float(
            np.mean(
                [
                    (img[k, 0, b[1] : b[3], b[0] : b[2]] - clean[k, 0, b[1] : b[3], b[0] : b[2]])
                    .abs()
                    .mean()
                    for k, b in enumerate(boxes)
                ]
            )
        )

    assert box_error(pulled) < 0.85 * box_error(erased)
    harder = solvers.final_fit(deg, y, erased, 10 * solvers.FINAL_FIT)
    assert box_error(harder) < 0.85 * box_error(pulled)  # a larger fit keeps more of it
    assert (pulled - clean).pow(2).mean() < (erased - clean).pow(2).mean()
    assert torch.equal(solvers.final_fit(deg, y, erased, 0.0), erased)  # fit 0: off
    # A noise-free scan is reproduced exactly by the nearest image; pure denoising is off.
    mask = parse_spec("inpaint:box")
    ym = mask.simulate(clean)
    assert torch.allclose(mask.A(solvers.final_fit(mask, ym, erased, 1e-3)), ym, atol=1e-5)
    assert solvers.default_fit(parse_spec("noise:poisson:dose=200,read=0.01")) == 0.0
    assert solvers.default_fit(deg) == solvers.FINAL_FIT


def test_the_restorer_applies_and_records_the_final_fit(tiny_models: Path) -> None:
    _, y = observe(TINY_BRIDGE_SPEC)
    images = y[:, 0].numpy()
    default = Restorer("cddb", tiny_models, nfe=2).restore(images, TINY_BRIDGE_SPEC)
    off = Restorer("cddb", tiny_models, nfe=2, fit=0).restore(images, TINY_BRIDGE_SPEC)
    assert default[0].provenance["params"]["final_fit"] == solvers.FINAL_FIT
    assert off[0].provenance["params"]["final_fit"] == 0
    deg = parse_spec(TINY_BRIDGE_SPEC)
    fitted = [
        deg.residual(y[i : i + 1], torch.from_numpy(r.image)[None, None])
        for i, r in enumerate(default)
    ]
    loose = [
        deg.residual(y[i : i + 1], torch.from_numpy(r.image)[None, None]) for i, r in enumerate(off)
    ]
    assert all(a < b for a, b in zip(fitted, loose, strict=True))
    with pytest.raises(RestorationInputError):
        Restorer("cddb", tiny_models, fit=-1.0)


def test_blind_dps_returns_a_normalised_kernel_and_fits_the_data(tiny_models: Path) -> None:
    prior, kprior = load_prior(tiny_models / "prior"), load_prior(tiny_models / "kernel_prior")
    _, y = observe("blur:motion:length=5,angle=30+noise:gauss:sigma=0.01")
    deg = parse_spec("blur:unknown")
    res = solvers.blind_dps(prior, kprior, deg, y, gens(2), nfe=6)
    free = solvers.blind_dps(prior, kprior, deg, y, gens(2), nfe=6, zeta=0, zeta_kernel=0)
    assert res.x.shape == (2, 1, 32, 32) and res.kernel.shape == (2, 1, 16, 16)
    assert (res.kernel >= 0).all() and torch.allclose(
        res.kernel.sum(dim=(-2, -1)), torch.ones(2, 1)
    )
    fit = deg.with_kernel(res.kernel).residual(y, res.x)
    assert (fit < deg.with_kernel(free.kernel).residual(y, free.x)).all()


@pytest.mark.parametrize(
    "method,spec,obs",
    [
        ("dps", BLUR, BLUR),
        ("cddb", TINY_BRIDGE_SPEC, TINY_BRIDGE_SPEC),
        ("cddb-deep", TINY_BRIDGE_SPEC, TINY_BRIDGE_SPEC),
        ("blinddps", "blur:unknown", "blur:gauss:sigma=1.5"),
    ],
)
def test_api_restores_deterministically_with_provenance(
    tiny_models: Path, method: str, spec: str, obs: str
) -> None:
    _, y = observe(obs)
    images = y[:, 0].numpy()
    restorer = Restorer(method, tiny_models, nfe=4)
    a = restorer.restore(images, spec, seed=3)
    b = restorer.restore(images, spec, seed=3)
    c = restorer.restore(images, spec, seed=4)
    alone = restorer.restore(images[1:], spec, seed=3)
    assert len(a) == 2 and a[0].image.shape == (32, 32) and a[0].image.dtype == np.float32
    assert all(np.array_equal(r.image, s.image) for r, s in zip(a, b, strict=True))
    assert not np.array_equal(a[0].image, c[0].image)
    np.testing.assert_allclose(alone[0].image, a[1].image, atol=1e-4)  # batch does not matter
    p = a[0].provenance
    assert p["method"] == method and p["seed"] == 3 and p["nfe"] == 4
    assert len(p["model_sha256"]) == 64 and p["residual"] > 0 and p["seconds"] > 0
    assert (a[0].kernel is not None) == (method == "blinddps")


def test_api_rejects_bad_inputs_with_typed_errors(tiny_models: Path) -> None:
    r = Restorer("dps", tiny_models, nfe=2)
    good = np.full((1, 32, 32), 0.5, dtype=np.float32)
    bad = good.copy()
    bad[0, 3, 3] = np.nan
    cases = [
        bad,
        good[0],
        np.zeros((1, 32, 32, 3), np.float32),
        np.zeros((1, 16, 16), np.float32),
        np.zeros((1, 32, 129), np.float32),
        (good * 255).astype(np.uint8),
    ]
    for images in cases:
        with pytest.raises(RestorationInputError):
            r.restore(images, BLUR)
    with pytest.raises(UnsupportedMethodError):
        r.restore(good, "blur:unknown")
    with pytest.raises(UnsupportedMethodError):
        Restorer("cddb", tiny_models, nfe=2).restore(good, "sr:2")  # no bridge for it
    with pytest.raises(UnsupportedMethodError):
        Restorer("magic", tiny_models)
    with pytest.raises(ModelDirError):
        Restorer("dps", tiny_models / "nowhere")
    # Sides that are not a multiple of the UNet's downsampling still work (padded inside).
    odd = r.restore(np.full((1, 35, 33), 0.5, np.float32), BLUR)
    assert odd[0].image.shape == (35, 33) and np.isfinite(odd[0].image).all()
    # sr:2 restores a 16-px observation onto the 32-px grid.
    out = r.restore(np.full((1, 16, 16), 0.5, np.float32), "sr:2")
    assert out[0].image.shape == (32, 32)


def test_the_mirror_ensemble_averages_the_scan_and_its_mirror_image(tiny_models: Path) -> None:
    _, y = observe(TINY_BRIDGE_SPEC)
    images = y[:, 0].numpy()
    plain = Restorer("cddb", tiny_models, nfe=2, fit=0)
    both = Restorer("cddb", tiny_models, nfe=2, fit=0, mirror=True).restore(
        images, TINY_BRIDGE_SPEC
    )
    direct = plain.restore(images, TINY_BRIDGE_SPEC)
    mirrored = plain.restore(np.ascontiguousarray(images[..., ::-1]), TINY_BRIDGE_SPEC)
    for b, d, m in zip(both, direct, mirrored, strict=True):
        np.testing.assert_allclose(b.image, (d.image + m.image[..., ::-1]) / 2, atol=1e-6)
        assert b.provenance["params"]["mirror_ensemble"] is True
        assert not np.allclose(b.image, d.image)
    assert "mirror_ensemble" not in direct[0].provenance["params"]


def test_the_mirror_ensemble_is_refused_where_the_scanner_is_not_symmetric(
    tiny_models: Path,
) -> None:
    assert parse_spec("inpaint:box").mirror_symmetric((32, 32))
    assert parse_spec(BLUR).mirror_symmetric((32, 32))
    slanted = "blur:motion:length=5,angle=30+noise:gauss:sigma=0.01"
    assert not parse_spec(slanted).mirror_symmetric((32, 32))
    _, y = observe(slanted)
    with pytest.raises(RestorationInputError, match="not left-right symmetric"):
        Restorer("dps", tiny_models, nfe=2, mirror=True).restore(y[:, 0].numpy(), slanted)
    with pytest.raises(UnsupportedMethodError, match="mirror"):
        Restorer("blinddps", tiny_models, mirror=True)


def test_a_blind_bridge_restores_without_a_kernel(tiny_models: Path) -> None:
    """A bridge trained on random kernels restores ``blur:unknown`` with plain CDDB steps (no
    operator to step with), records that, and leaves the data fit unknown; a final fit, which
    needs the kernel, is not applied, and methods that need it are refused with their reason."""
    _, y = observe("blur:motion:length=5,angle=30+noise:gauss:sigma=0.01")
    images = y[:, 0].numpy()
    out = Restorer("cddb", tiny_models, nfe=2).restore(images, TINY_BLIND_SPEC)
    spec = parse_spec(TINY_BLIND_SPEC).spec
    for r in out:
        assert r.image.shape == (32, 32) and np.isfinite(r.image).all()
        assert r.provenance["degradation"] == spec and r.provenance["residual"] is None
        assert r.provenance["model_id"].endswith("bridges/blind")
        assert r.provenance["params"]["data_consistency"] is False
        assert "final_fit" not in r.provenance["params"] and r.kernel is None
    mirrored = Restorer("cddb", tiny_models, nfe=2, mirror=True).restore(images, TINY_BLIND_SPEC)
    assert mirrored[0].provenance["params"]["mirror_ensemble"] is True
    with pytest.raises(UnsupportedMethodError, match="known operator"):
        Restorer("cddb-deep", tiny_models, nfe=2).restore(images, TINY_BLIND_SPEC)
    with pytest.raises(UnsupportedMethodError, match="known operator"):
        Restorer("dps", tiny_models, nfe=2).restore(images, TINY_BLIND_SPEC)
    fitted = Restorer("cddb", tiny_models, nfe=2, fit=0.01).restore(images, TINY_BLIND_SPEC)
    np.testing.assert_array_equal(fitted[0].image, out[0].image)  # no kernel to fit: not applied
