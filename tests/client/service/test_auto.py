"""`auto` mode on real radiographs (cxr-open, 64 px) with known synthetic noise and blur."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize

from festa.client.restoration.operators import parse_spec
from festa.client.service.auto import AutoEstimate, calibration_degrade, estimate
from festa.shared.data.imageio import read_image


@pytest.fixture(scope="module")
def clean_images(cxr_open_dir: Path) -> list[np.ndarray]:
    files = sorted((cxr_open_dir / "images").glob("*.png"))[5::97][:12]
    assert len(files) == 12
    return [resize(read_image(f), (64, 64), anti_aliasing=True) for f in files]


def _estimates(images, blur: float = 0.0, dose: float | None = None) -> list[AutoEstimate]:
    rng = np.random.default_rng(0)
    return [estimate(calibration_degrade(image, blur, dose, rng)) for image in images]


def test_clean_radiographs_are_mostly_judged_sharp(clean_images) -> None:
    found = _estimates(clean_images)
    assert sum(e.blur_present for e in found) <= 3
    assert np.median([e.noise_sigma for e in found]) < 0.01


@pytest.mark.parametrize("dose", [250, 1000])
def test_poisson_dose_is_estimated_within_half_again(clean_images, dose: int) -> None:
    found = _estimates(clean_images, dose=dose)
    assert all(e.noise_term for e in found)  # noise is always noticed
    fitted = [e.dose for e in found if e.noise_term.startswith("noise:poisson:dose=")]
    assert len(fitted) >= 7  # the rest fall back to a Gaussian noise term of the same level
    median = np.median(fitted)
    assert dose / 1.5 < median < dose * 1.5, median


@pytest.mark.parametrize("dose", [None, 1000])
def test_gaussian_blur_is_detected_and_sized(clean_images, dose: int | None) -> None:
    found = _estimates(clean_images, blur=2.5, dose=dose)
    assert sum(e.blur_present for e in found) >= 10
    assert 1.5 <= np.median([e.blur_sigma for e in found]) <= 3.5
    for e in found:
        if e.blur_present:
            assert e.spec.startswith("blur:gauss:sigma=")


def test_auto_specs_parse_and_auto_method_picks_the_solver(clean_images) -> None:
    blurred_noisy = _estimates(clean_images[:3], blur=2.5, dose=1000)
    noisy = _estimates(clean_images[:3], dose=250)
    for e in blurred_noisy + noisy:
        for configured in ("dps", "blinddps", "auto"):
            method, spec = e.choose(configured)
            parse_spec(spec)  # the engine accepts what auto writes (raises otherwise)
            if configured == "auto":
                assert method == ("blinddps" if e.blur_present else "dps")
            if method == "blinddps" and e.blur_present:
                assert spec.startswith("blur:unknown")
    assert sum(e.choose("auto")[0] == "dps" for e in noisy) >= 2
