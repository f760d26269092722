"""Guided reverse diffusions (our own loops; diffusers pipelines run under ``no_grad``).

All solvers take the observation ``y`` ``[B, 1, h, w]`` (intensities in [0, 1]) and return the
estimate ``x`` ``[B, 1, H, W]`` in [0, 1] on the operator's input grid. The models work in
[-1, 1]; ``image = (x + 1) / 2``. Randomness comes from one ``torch.Generator`` per sample, so
each image's result does not depend on what else is in its batch.

- :func:`dps`: DPS (Chung et al. 2023). Ancestral DDPM when ``nfe >= 1000``, else DDIM (eta = 1,
  i.e. respaced ancestral) on ``nfe`` steps. After each step ``x <- x' - zeta * grad_x ||y - A(x0_hat)||``
  with the non-squared, per-sample norm (weighted LS for Poisson-Gaussian noise).
- :func:`cddb`: CDDB (Chung, Kim, Ye 2023) on an I2SB bridge. ``deep=False``: a weighted
  Landweber step ``x0_hat <- x0_hat - alpha A^T W (A x0_hat - y)`` before each bridge step;
  ``deep=True`` (CDDB-deep): the DPS-like gradient through the network, applied to ``x_t``.
  For a blind blur (``blur:unknown``) there is no operator to step with: a bridge trained on
  random kernels is sampled as it is (plain I2SB, ``deep=False`` only).
- :func:`gctm`: one-step restoration by a GCTM model distilled from a CDDB bridge
  (:mod:`festa.client.restoration.gctm`): ``x0 = G(lift(y), 1, 0)``, one network evaluation.
- :func:`blind_dps`: BlindDPS (Chung et al. 2023): image and kernel chains in parallel, the kernel
  ``x0_hat`` made non-negative and summing to 1, with an L1 sparsity penalty on it.
- :func:`final_fit`: after any non-blind solver, the estimate is pulled back towards the scan
  (a proximal data-consistency step, solved by conjugate gradients), so that detail the data
  support but the network smoothed away, such as a small lesion under blur, is not lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from festa.client.restoration.gctm import TrajectoryModel
from festa.client.restoration.models import Bridge, DiffusionPrior
from festa.client.restoration.operators import Degradation, Identity
from festa.client.restoration.training import kernel_from_model

# Default step sizes, tuned by hand on two 64-px phantoms of seed 999 (not the benchmark's 12345)
# with the committed phantom64 weights: DPS zeta = 1 at 1000 steps, sqrt-scaled for fewer.
DPS_ZETA_1000 = 1.0
CDDB_ALPHA = 0.4  # for noisy observations: a partial step regularises against the noise
CDDB_ALPHA_NOISE_FREE = 1.0  # noise-free: the full step (for a mask, the known pixels exactly)
CDDB_DEEP_ZETA_20 = 6.0  # at 20 NFE; scaled by sqrt(20 / nfe) like DPS
# Final data fit (:func:`final_fit`): lam = noise variance / fit. At FINAL_FIT, on held-out
# phantoms with a lesion (bench_lesion_fidelity) a blurred lesion's contrast comes back almost
# whole at no PSNR cost, training detection on restored blurred images recovers what the blur
# cost (bench_restore_training), and on real CXRs PSNR rises by 0.4-0.9 dB for blur and sr x2
# (BENCHMARKS.md, 2026-12-07). For denoising alone (A = I) the pull is a per-pixel blend with the
# noisy scan that costs 2.5-5 dB on real CXRs at this weight, so there it is off by default
# (:func:`default_fit`).
FINAL_FIT = 1e-2
BLIND_ZETA_KERNEL = 0.3
BLIND_SPARSITY = 1e-3


@dataclass
class SolverResult:
    x: torch.Tensor  # [B, 1, H, W] in [0, 1]
    nfe: int
    params: dict[str, Any] = field(default_factory=dict)
    kernel: torch.Tensor | None = None  # [B, 1, K, K], BlindDPS only


def randn(
    shape: tuple[int, ...], gens: list[torch.Generator], device: torch.device
) -> torch.Tensor:
    """Standard normal ``[B, *shape]`` with sample ``i`` drawn from ``gens[i]``."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])


def _img(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def ddim_schedule(nfe: int, T: int = 1000) -> list[tuple[int, int]]:
    """Pairs ``(t, t_prev)`` from ``T - 1`` down; the last ``t_prev`` is -1 (x0)."""
    nfe = max(1, min(nfe, T))
    ts = torch.linspace(T - 1, 0, nfe).round().long().tolist()
    ts = list(dict.fromkeys(ts))
    return list(zip(ts, [*ts[1:], -1], strict=True))


def ddim_step(
    prior: DiffusionPrior,
    x: torch.Tensor,
    x0: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One DDIM(eta) step from ``x_t`` to ``x_{t_prev}`` given ``x0_hat`` (clipped to [-1, 1])."""
    a = float(prior.alphas_cumprod[t])
    ap = float(prior.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    x0 = x0.clamp(-1, 1)
    eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    sigma = eta * ((1 - ap) / (1 - a)) ** 0.5 * (1 - a / ap) ** 0.5
    return ap**0.5 * x0 + max(1 - ap - sigma**2, 0.0) ** 0.5 * eps + sigma * noise


def dps_zeta(nfe: int, at_1000: float = DPS_ZETA_1000) -> float:
    """DPS step size for ``nfe`` steps, ``at_1000`` at 1000: fewer steps need a larger step
    (sqrt scaling)."""
    return at_1000 * (1000 / min(nfe, 1000)) ** 0.5


@dataclass(frozen=True)
class Chain:
    """One reverse diffusion of a guided DDIM loop: its prior, per-sample shape and step size."""

    prior: DiffusionPrior
    shape: tuple[int, ...]  # per sample, e.g. (1, H, W)
    zeta: float  # step along -grad of the objective after each DDIM step; 0: unguided


# x0_hat of every chain (model space, [B, *chain.shape]) -> per-sample objective [B]
Objective = Callable[[list[torch.Tensor]], torch.Tensor]


def guided_ddim(
    chains: list[Chain],
    objective: Objective,
    gens: list[torch.Generator],
    device: torch.device,
    nfe: int,
    eta: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Run ``chains`` in parallel on the DDIM schedule of ``nfe`` steps; after each step every
    chain moves by ``-zeta * grad`` of ``objective`` w.r.t. its ``x_t``. Returns the final ``x``
    and last ``x0_hat`` of each chain (model space) and the number of steps. Noise is drawn per
    step in chain order, from ``gens`` (one generator per sample)."""
    xs = [randn(c.shape, gens, device) for c in chains]
    x0s = xs
    guided = any(c.zeta > 0 for c in chains)
    steps = ddim_schedule(nfe)
    for t, t_prev in steps:
        xs = [x.detach().requires_grad_(guided) for x in xs]
        with torch.enable_grad():
            x0s = [c.prior.predict_x0(x, t) for c, x in zip(chains, xs, strict=True)]
            grads = torch.autograd.grad(objective(x0s).sum(), xs) if guided else None
        moved = []
        for i, (c, x, x0) in enumerate(zip(chains, xs, x0s, strict=True)):
            noise = torch.zeros_like(x) if t_prev < 0 else randn(c.shape, gens, device)
            x = ddim_step(c.prior, x.detach(), x0.detach(), t, t_prev, eta, noise)
            moved.append(x - c.zeta * grads[i] if grads is not None else x)
        xs = moved
    return [x.detach() for x in xs], [x0.detach() for x0 in x0s], len(steps)


def dps(
    prior: DiffusionPrior,
    deg: Degradation,
    y: torch.Tensor,
    gens: list[torch.Generator],
    nfe: int = 1000,
    zeta: float | None = None,
    eta: float = 1.0,
) -> SolverResult:
    """Diffusion posterior sampling; ``zeta=0`` gives the unguided prior sample."""
    zeta = dps_zeta(nfe) if zeta is None else zeta
    H, W = deg.operator.input_hw(tuple(y.shape[-2:]))
    (x,), _, steps = guided_ddim(
        [Chain(prior, (1, H, W), zeta)],
        lambda x0s: deg.residual(y, _img(x0s[0])),
        gens,
        y.device,
        nfe,
        eta,
    )
    params = {"zeta": zeta, "eta": eta, "sampler": "ddpm" if nfe >= 1000 else "ddim"}
    return SolverResult(_img(x).clamp(0, 1), steps, params)


def _landweber(deg: Degradation, y: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x0 - alpha * grad 1/2 ||y - A(img)||_W^2`` in image space, returned in model space."""
    img = _img(x0.detach()).requires_grad_(True)
    with torch.enable_grad():
        fit2 = 0.5 * deg.residual(y, img).pow(2).sum()
        (g,) = torch.autograd.grad(fit2, img)
    return (img.detach() - alpha * g) * 2 - 1


def data_prox(
    deg: Degradation, y: torch.Tensor, x: torch.Tensor, lam: float | torch.Tensor, iters: int = 30
) -> torch.Tensor:
    """The image closest to the estimate ``x`` that also fits ``y``: per sample,
    ``argmin_z ||y - A z||_W^2 + lam ||z - x||^2`` by conjugate gradients (images in [0, 1]).

    Detail that the data support but a learned restoration smoothed away (a small lesion under
    blur) comes back; ``lam`` trades it against the noise that the fit lets through."""
    op = deg.operator
    w = deg.noise.weights(y)
    w = torch.ones_like(y) if w is None else w

    def normal(v: torch.Tensor) -> torch.Tensor:
        return op.A_adjoint(w * op.A(v)) + lam * v

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    z = x.detach().clone()
    r = op.A_adjoint(w * (y - op.A(z)))  # the normal equations' residual at z = x
    p, rs = r.clone(), dot(r, r)
    for _ in range(iters):
        if float(rs.max()) < 1e-14:
            break
        hp = normal(p)
        a = rs / dot(p, hp).clamp_min(1e-20)
        z, r = z + a * p, r - a * hp
        rs_next = dot(r, r)
        p, rs = r + rs_next / rs.clamp_min(1e-20) * p, rs_next
    return z


def final_fit(deg: Degradation, y: torch.Tensor, x: torch.Tensor, fit: float) -> torch.Tensor:
    """The restored images ``x`` pulled back towards the scan ``y``: :func:`data_prox` with
    ``lam = noise variance / fit`` (``fit`` 0: ``x`` unchanged; a noise-free scan: the nearest
    image that reproduces it exactly), clipped to [0, 1]."""
    if fit <= 0:
        return x
    lam = deg.noise.variance(y) / fit
    return data_prox(deg, y, x, lam).clamp(0, 1)


def default_fit(deg: Degradation) -> float:
    """The final-fit weight used when none is given: FINAL_FIT, or 0 (off) for pure denoising."""
    return 0.0 if isinstance(deg.operator, Identity) else FINAL_FIT


def cddb_alpha(deg: Degradation) -> float:
    """CDDB's default Landweber step for ``deg``: partial when the observation is noisy, full
    when it is noise-free, where nothing argues against trusting it (box inpainting on real CXRs:
    38.76 dB at the full step vs 36.36 dB at 0.4, BENCHMARKS.md)."""
    return CDDB_ALPHA_NOISE_FREE if deg.noise_free else CDDB_ALPHA


def cddb(
    bridge: Bridge,
    deg: Degradation,
    y: torch.Tensor,
    gens: list[torch.Generator],
    nfe: int = 20,
    deep: bool = False,
    step: float | None = None,
) -> SolverResult:
    """CDDB / CDDB-deep on ``nfe`` bridge steps, starting at ``x1 = lift(y)``; for a blind
    ``deg``, the bridge's own steps without data consistency (I2SB)."""
    if deg.blind and deep:
        raise ValueError("CDDB-deep needs a known operator; blind blur takes plain cddb")
    if deg.blind:
        step = 0.0
    elif step is None:
        step = CDDB_DEEP_ZETA_20 * (20 / nfe) ** 0.5 if deep else cddb_alpha(deg)
    x = deg.operator.lift(y).clamp(0, 1) * 2 - 1
    ts = bridge.schedule.timesteps(nfe)
    x0 = x
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        x = x.detach().requires_grad_(deep)
        with torch.enable_grad():
            x0 = bridge.predict_x0(x, t)
            if deep:
                (grad,) = torch.autograd.grad(deg.residual(y, _img(x0)).sum(), x)
        if not deep and not deg.blind:
            x0 = _landweber(deg, y, x0, step)
        noise = randn(tuple(x.shape[1:]), gens, y.device) if s > 0 else None
        x = bridge.schedule.posterior(x0.detach(), x.detach(), s, t, noise)
        if deep:
            x = x - step * grad
    params = {"step": step, "deep": deep, "data_consistency": not deg.blind}
    return SolverResult(_img(x0.detach()).clamp(0, 1), len(ts) - 1, params)


def gctm(model: TrajectoryModel, deg: Degradation, y: torch.Tensor, nfe: int = 1) -> SolverResult:
    """GCTM: jump from ``x1 = lift(y)`` to the clean end of the bridge trajectory in ``nfe``
    network evaluations (1: one-step restoration). Deterministic; no data-consistency step."""
    x = deg.operator.lift(y).clamp(0, 1) * 2 - 1
    x0 = model.restore(x, nfe)
    return SolverResult(_img(x0).clamp(0, 1), nfe, {"jumps": nfe, "start": "lift(y) at t = 1"})


def blind_dps(
    prior: DiffusionPrior,
    kernel_prior: DiffusionPrior,
    deg: Degradation,
    y: torch.Tensor,
    gens: list[torch.Generator],
    nfe: int = 1000,
    zeta: float | None = None,
    zeta_kernel: float | None = None,
    sparsity: float = BLIND_SPARSITY,
    eta: float = 1.0,
) -> SolverResult:
    """BlindDPS for ``deg`` containing ``blur:unknown``; returns the image and kernel estimates."""
    zeta = dps_zeta(nfe) if zeta is None else zeta
    zeta_k = dps_zeta(nfe, BLIND_ZETA_KERNEL) if zeta_kernel is None else zeta_kernel
    K = deg.kernel_size()
    H, W = deg.operator.input_hw(tuple(y.shape[-2:]))

    def fit_and_sparsity(x0s: list[torch.Tensor]) -> torch.Tensor:
        x0, z0 = x0s
        fit = deg.with_kernel(kernel_from_model(z0)).residual(y, _img(x0))
        return fit + sparsity * _img(z0).clamp_min(0).flatten(1).sum(1)

    (x, _), (_, z0), steps = guided_ddim(
        [Chain(prior, (1, H, W), zeta), Chain(kernel_prior, (1, K, K), zeta_k)],
        fit_and_sparsity,
        gens,
        y.device,
        nfe,
        eta,
    )
    kernel = kernel_from_model(z0.clamp(-1, 1))
    params = {"zeta": zeta, "zeta_kernel": zeta_k, "sparsity": sparsity, "eta": eta}
    return SolverResult(_img(x).clamp(0, 1), steps, params, kernel)  # NFE per chain
