"""The restoration benchmark's reference methods: classical baselines and deepinv's solvers.

Classical (training-free, scikit-image and the ``bm3d`` package): TV, BM3D, Wiener and
Richardson-Lucy with the true kernel, bicubic upsampling, biharmonic inpainting. (bm3d 4.0.3's
``bm3d_deblurring`` is not used: under numpy 2.4 it needs the removed ``np.trapz``, and with a
shim it ran over 3 min on one 64-px image here.) Their free parameter is tuned on a few cxr-open *train* images
(:func:`tune`), never on the images they are scored on.

deepinv 0.5 (an outside implementation on festa's own prior): DPS, DiffPIR and DDRM with the
festa image prior wrapped as a deepinv denoiser (:class:`FestaPriorDenoiser`) and deepinv
physics built to equal festa's operators (circular blur, ``sr:F`` with the same anti-alias
filter, the same box mask).
"""

from __future__ import annotations

from collections.abc import Callable

import bm3d
import deepinv as dinv
import numpy as np
import torch
from skimage import restoration, transform
from skimage.metrics import peak_signal_noise_ratio

from festa.client.restoration.models import DiffusionPrior, run_unet
from festa.client.restoration.operators import (
    Blur,
    Composed,
    Degradation,
    Downsample,
    GaussianNoise,
    Mask,
    PoissonGaussianNoise,
)

# --------------------------------------------------------------------------------------------
# Classical baselines: name -> (y [h, w], degradation, parameter) -> estimate [H, W]
# --------------------------------------------------------------------------------------------


def _ops(deg: Degradation) -> list:
    return deg.operator.ops if isinstance(deg.operator, Composed) else [deg.operator]


def true_kernel(deg: Degradation) -> np.ndarray:
    """The known blur kernel ``[K, K]`` of a degradation (its only ``Blur`` term)."""
    return next(op.kernel for op in _ops(deg) if type(op) is Blur).numpy().astype(np.float64)


def noise_sigma(deg: Degradation, y: np.ndarray) -> float:
    """A Gaussian noise level for ``y``: sigma, or for Poisson-Gaussian sqrt(mean(y)/dose + read^2)."""
    n = deg.noise
    if isinstance(n, GaussianNoise):
        return n.sigma
    if isinstance(n, PoissonGaussianNoise):
        return float(np.sqrt(max(y.mean(), 0) / n.dose + n.read**2))
    return 0.0


def _tv(y, deg, w):
    return restoration.denoise_tv_chambolle(y, weight=w)


def _bm3d(y, deg, m):
    return bm3d.bm3d(y, sigma_psd=m * noise_sigma(deg, y))


def _wiener(y, deg, balance):
    return restoration.wiener(y, true_kernel(deg), balance=balance, clip=True)


def _rl(y, deg, iters):
    return restoration.richardson_lucy(np.clip(y, 0, 1), true_kernel(deg), num_iter=int(iters))


def _bicubic(y, deg, _):
    f = next(op.factor for op in _ops(deg) if isinstance(op, Downsample))
    return transform.resize(y, (y.shape[0] * f, y.shape[1] * f), order=3, mode="reflect")


def _biharmonic(y, deg, _):
    mask = next(op for op in _ops(deg) if isinstance(op, Mask)).mask(torch.from_numpy(y))
    return restoration.inpaint_biharmonic(y, (1 - mask.numpy()).astype(bool))


Classical = Callable[[np.ndarray, Degradation, float], np.ndarray]
# name -> (function, the grid its parameter is tuned over; one value: nothing to tune)
CLASSICAL: dict[str, tuple[Classical, tuple[float, ...]]] = {
    "TV": (_tv, (0.02, 0.04, 0.06, 0.08, 0.12, 0.16)),
    "BM3D": (_bm3d, (0.6, 0.8, 1.0, 1.2)),
    "Wiener (true k)": (_wiener, (0.003, 0.01, 0.03, 0.1, 0.3)),
    "Richardson-Lucy (true k)": (_rl, (5, 10, 20, 40, 80)),
    "bicubic": (_bicubic, (0,)),
    "biharmonic": (_biharmonic, (0,)),
}


def tune(name: str, tune_x: np.ndarray, tune_y: np.ndarray, deg: Degradation) -> float:
    """The grid value of baseline ``name`` with the best mean PSNR on (clean, observed) pairs."""
    fn, grid = CLASSICAL[name]
    if len(grid) == 1:
        return grid[0]
    scores = [
        np.mean(
            [
                peak_signal_noise_ratio(x, np.clip(fn(y, deg, v), 0, 1), data_range=1)
                for x, y in zip(tune_x, tune_y, strict=True)
            ]
        )
        for v in grid
    ]
    return grid[int(np.argmax(scores))]


def run_classical(name: str, y: np.ndarray, deg: Degradation, param: float) -> np.ndarray:
    """Baseline ``name`` with parameter ``param`` on one observation ``y`` ``[h, w]``."""
    return np.clip(CLASSICAL[name][0](y.astype(np.float64), deg, param), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# deepinv on festa's prior
# --------------------------------------------------------------------------------------------


class FestaPriorDenoiser(dinv.models.Denoiser):
    """festa's eps-predicting DDPM prior as a deepinv denoiser ``D(x, sigma)`` on [0, 1] images.

    As deepinv's own ``DiffUNet``: ``x + sigma n`` is mapped to the DDPM's [-1, 1] scale and
    scaled by ``sqrt(abar)`` with ``abar = 1 / (1 + 4 sigma^2)``, the UNet runs at the timestep
    whose noise level is nearest, and ``x0_hat`` comes back in [0, 1]."""

    def __init__(self, prior: DiffusionPrior) -> None:
        super().__init__()
        self.prior = prior
        self.register_buffer("abar", prior.alphas_cumprod.float())

    def forward(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        sigma = self._handle_sigma(sigma, x.shape[0], x.ndim, x.device, x.dtype)
        a = 1 / (1 + 4 * sigma**2)
        xt = a.sqrt() * (2 * x - 1)
        out = torch.empty_like(x)
        ts = (self.abar[None, :] - a.flatten()[:, None]).abs().argmin(dim=1)
        for t in ts.unique().tolist():  # one UNet call per distinct timestep
            idx = (ts == t).nonzero().flatten()
            eps = run_unet(self.prior.unet, xt[idx], t)
            ai = a[idx]
            out[idx] = ((xt[idx] - (1 - ai).sqrt() * eps) / ai.sqrt()).clamp(-1, 1)
        return ((out + 1) / 2).to(dtype)


def deepinv_physics(deg: Degradation, hw: tuple[int, int], sigma: float) -> dinv.physics.Physics:
    """deepinv physics equal to festa's operator of ``deg`` (one term), noise level ``sigma``."""
    (op,) = _ops(deg)
    noise = dinv.physics.GaussianNoise(sigma=max(sigma, 1e-3))
    size = (1, *hw)
    if type(op) is Blur:
        return dinv.physics.BlurFFT(size, filter=op.kernel[None, None], noise_model=noise)
    if isinstance(op, Downsample):
        return dinv.physics.Downsampling(
            size, filter=op.blur.kernel[None, None], factor=op.factor, padding="circular",
            noise_model=noise,
        )  # fmt: skip
    if isinstance(op, Mask):
        mask = op.mask(torch.zeros(hw))[None]
        return dinv.physics.Inpainting(size, mask=mask, noise_model=noise)
    return dinv.physics.Denoising(noise_model=noise)


DEEPINV_METHODS = ("deepinv DPS", "deepinv DiffPIR", "deepinv DDRM")


def deepinv_applicable(method: str, deg: Degradation) -> bool:
    """DDRM needs an SVD (denoising, circular blur, inpainting); none of them is blind."""
    if deg.blind:
        return False
    return method != "deepinv DDRM" or not any(isinstance(op, Downsample) for op in _ops(deg))


def run_deepinv(
    method: str, prior: DiffusionPrior, deg: Degradation, y: np.ndarray, steps: int, seed: int
) -> np.ndarray:
    """deepinv's ``method`` on observations ``y`` ``[B, h, w]`` -> estimates ``[B, H, W]``."""
    den = FestaPriorDenoiser(prior)
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[:, None]
    hw = deg.operator.input_hw(tuple(y.shape[-2:]))
    sigma = float(np.mean([noise_sigma(deg, v) for v in y]))
    physics = deepinv_physics(deg, hw, sigma)
    torch.manual_seed(seed)
    if method == "deepinv DPS":
        solver = dinv.sampling.DPS(
            den, num_steps=steps, weight=(1000 / steps) ** 0.5, dtype=torch.float32,
            rng=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        x = solver(yt, physics, seed=seed)
    elif method == "deepinv DiffPIR":
        x = dinv.sampling.DiffPIR(den, dinv.optim.L2(), sigma=max(sigma, 1e-3), max_iter=steps)(
            yt, physics, seed=seed
        )
    else:
        with torch.no_grad():
            x = dinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, steps))(yt, physics, seed=seed)
    return x.detach()[:, 0].clamp(0, 1).numpy()
