"""`auto` degradation: estimate noise and blur from the image itself and build a SPEC.

Noise: on the finest orthonormal Haar level, white noise of variance s^2 gives detail
coefficients of variance s^2, while a smooth image gives almost none. The robust (MAD) variance
of the diagonal details, binned by local brightness, is fitted by a Poisson-Gaussian noise level
function var = m / dose + read^2 (weighted least squares, non-negative).

Blur: for a sharp edge the strongest detail magnitude shrinks by about 2^-1/2 per finer octave;
behind a blur it shrinks by about 2^-3/2. The ratio of the 99th-percentile detail magnitude of
two neighbouring levels (noise energy subtracted) against a reference measured on sharp cxr-open
radiographs says whether blur is present, and a calibration table turns it into a Gaussian
sigma. Calibration (30 cxr-open images resized to 64 px, Gaussian blur sigma in pixels):
fine/mid ratio 0.37 sharp, 0.29 at sigma 1, 0.28 at 1.5, 0.26 at >= 2 (low noise);
mid/coarse ratio 0.40 sharp, 0.34 at 1, 0.31 at 1.5, 0.28 at 2, 0.27 at 3 (any noise).
Accuracy is modest per image (see tests and the report); the estimate is recorded either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NOISE_FLOOR = 0.01
"""Below this noise std (on [0, 1]) an image is treated as noise-free (8-bit steps are 0.001)."""

DOSE_GRID = (125, 250, 500, 1000, 2000, 4000, 8000, 16000)
# (blur sigma, ratio) calibration tables, ratio decreasing with sigma
FINE_TABLE = ((0.0, 0.106), (1.0, 0.074), (2.0, 0.066), (3.0, 0.062))
COARSE_TABLE = ((0.0, 0.123), (1.0, 0.093), (2.0, 0.070), (3.0, 0.062))
BLUR_PRESENT_SIGMA = 0.75


@dataclass(frozen=True)
class AutoEstimate:
    """What `estimate` measured and the SPEC it chose ('' when nothing needs restoring)."""

    noise_sigma: float
    dose: float | None
    read: float
    blur_ratio: float
    blur_ratio_level: str
    blur_sigma: float
    blur_present: bool
    noise_term: str
    spec: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def choose(self, method: str) -> tuple[str, str]:
        """(method, SPEC) for a configured method. `auto` picks BlindDPS with an unknown blur
        when blur is present, DPS otherwise; BlindDPS always gets `blur:unknown`."""
        if method == "auto":
            method = "blinddps" if self.blur_present else "dps"
        if method == "blinddps" and self.blur_present:
            blur = "blur:unknown"
        else:
            blur = self.spec.split("+")[0] if self.blur_present else ""
        return method, "+".join(t for t in (blur, self.noise_term) if t)


def _haar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One orthonormal 2-D Haar level: (approximation, horizontal, vertical, diagonal)."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    a, b = x[0:h:2, 0:w:2], x[0:h:2, 1:w:2]
    c, d = x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]
    return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def _mad_var(v: np.ndarray) -> float:
    return float((np.median(np.abs(v)) / 0.6745) ** 2)


def noise_level(image: np.ndarray, bins: int = 6) -> tuple[float, float | None, float]:
    """(overall noise std, Poisson dose or None, Gaussian read std) of a [H, W] image in [0, 1]."""
    approx, _, _, diag = _haar(image.astype(np.float64))
    sigma = float(np.sqrt(_mad_var(diag)))
    mean = (approx / 2).ravel()
    diag = diag.ravel()
    edges = np.quantile(mean, np.linspace(0, 1, bins + 1))
    means, variances, weights = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 16:
            means.append(mean[sel].mean())
            variances.append(_mad_var(diag[sel]))
            weights.append(np.sqrt(sel.sum()))
    if len(means) < 2 or np.ptp(means) < 1e-3:
        return sigma, None, sigma
    design = (
        np.stack([np.asarray(means), np.ones(len(means))], axis=1) * np.asarray(weights)[:, None]
    )
    slope, offset = np.linalg.lstsq(design, np.asarray(variances) * weights, rcond=None)[0]
    read = float(np.sqrt(max(offset, 0.0)))
    dose = float(1.0 / slope) if slope > 1e-7 else None
    return sigma, dose, read


def _band_ratio(image: np.ndarray, noise_sigma: float, fine: bool) -> float:
    """Mean detail energy of a finer Haar level over the next coarser one, noise subtracted."""
    energies = []
    approx = image.astype(np.float64)
    for _ in range(3):
        approx, dh, dv, dd = _haar(approx)
        energy = float(np.mean(np.concatenate([dh.ravel(), dv.ravel(), dd.ravel()]) ** 2))
        energies.append(max(energy - noise_sigma**2, 1e-12))
    return energies[0] / energies[1] if fine else energies[1] / energies[2]


def _sigma_from_ratio(ratio: float, table: tuple[tuple[float, float], ...]) -> float:
    sigmas = np.array([s for s, _ in table])
    ratios = np.array([r for _, r in table])
    return float(np.interp(ratio, ratios[::-1], sigmas[::-1]))


def _round_dose(dose: float) -> int:
    return min(DOSE_GRID, key=lambda d: abs(np.log(d) - np.log(dose)))


def estimate(image: np.ndarray) -> AutoEstimate:
    """Estimate noise and blur of one float [H, W] image in [0, 1] and choose a SPEC.

    The SPEC is quantised (dose on a doubling grid, read to 0.005, blur sigma to 0.5 px) so that
    similar images share a batch. An empty spec means no degradation was detected.
    """
    if image.ndim != 2 or min(image.shape) < 16:
        raise ValueError(f"auto estimation needs a 2-D image of at least 16 px, got {image.shape}")
    sigma, dose, read = noise_level(image)
    noisy = sigma >= NOISE_FLOOR
    fine = sigma < NOISE_FLOOR
    ratio = _band_ratio(image, sigma, fine=fine)
    blur_sigma = _sigma_from_ratio(ratio, FINE_TABLE if fine else COARSE_TABLE)
    blurred = blur_sigma >= BLUR_PRESENT_SIGMA
    noise_term = ""
    if noisy:
        if dose is not None and dose <= DOSE_GRID[-1] * 1.5:
            read_q = round(read / 0.005) * 0.005
            noise_term = f"noise:poisson:dose={_round_dose(dose)},read={read_q:g}"
        else:
            noise_term = f"noise:gauss:sigma={round(sigma / 0.005) * 0.005:g}"
    blur_term = f"blur:gauss:sigma={round(blur_sigma * 2) / 2:g}" if blurred else ""
    # forward model order: blur first, then detector noise (the SPEC applies terms left to right)
    spec = "+".join(t for t in (blur_term, noise_term) if t)
    return AutoEstimate(
        noise_sigma=sigma,
        dose=dose,
        read=read,
        blur_ratio=float(ratio),
        blur_ratio_level="fine/mid" if fine else "mid/coarse",
        blur_sigma=blur_sigma,
        blur_present=blurred,
        noise_term=noise_term,
        spec=spec,
    )


def calibration_degrade(
    image: np.ndarray, blur_sigma: float, dose: float | None, rng: np.random.Generator
) -> np.ndarray:
    """The synthetic degradation the tables above were measured with (and tests and the
    benchmark check against): Gaussian blur (reflect borders), then Poisson noise at `dose`."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(image, blur_sigma, mode="reflect") if blur_sigma else image
    if dose:
        x = rng.poisson(np.clip(x, 0, 1) * dose) / dose
    return np.asarray(x, dtype=np.float32)
