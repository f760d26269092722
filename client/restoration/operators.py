"""Degradations as objects: a linear forward operator ``A`` (with ``A_adjoint``) and a noise model.

Every tensor here is an image batch ``[B, 1, H, W]`` in the [0, 1] intensity scale.
A degradation is written as a SPEC string, terms joined with ``+`` and applied left to right;
at most one ``noise:`` term, always applied last::

    noise:gauss:sigma=0.02                 additive white Gaussian noise
    noise:poisson:dose=2000,read=0.01      Poisson-Gaussian: y = Poisson(dose*Ax)/dose + read*N(0,1)
    blur:gauss:sigma=2[,size=K]            known isotropic Gaussian blur (K odd, default 2*ceil(3 sigma)+1)
    blur:motion:length=7,angle=30[,size=K] known linear motion blur (length in px, angle in degrees)
    blur:unknown[:size=16]                 blind blur, kernel estimated by BlindDPS
    sr:2 | sr:4[:filter=bicubic|box|none]  anti-alias filter, then keep every F-th pixel
    inpaint:box[:size=0.25,cx=0.5,cy=0.5]  a missing square (side = size * min(H, W))
    inpaint:random[:p=0.5,seed=0]          a fraction p of pixels missing
    inpaint:lines[:n=4,width=1,seed=0]     n dead detector columns

e.g. ``blur:gauss:sigma=2+noise:poisson:dose=2000,read=0.01``. Missing pixels read 0 in ``y``.

Conventions (checked against ``deepinv`` 0.5 in the tests):

- Blur is a true circular convolution, ``y[i] = sum_j k[j] x[(i + c - j) mod N]`` with the kernel
  centre ``c = K // 2`` (per axis). This equals ``deepinv.physics.Blur(filter, padding="circular")``
  and ``deepinv.physics.BlurFFT``; it is computed with FFTs so it is exact-adjoint and
  differentiable in both the image and the kernel (BlindDPS needs the latter).
- ``sr:F`` is that circular blur with the anti-alias filter followed by ``x[..., ::F, ::F]``
  (offset 0), which equals ``deepinv.physics.Downsampling(filter=..., factor=F,
  padding="circular")``. Our default filter is bicubic (Keys, a = -0.5), of size 4F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from festa.client.restoration.errors import DegradationSpecError

DEFAULT_KERNEL_GRID = 16  # kernel side used by blind blur and the kernel prior


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """Isotropic Gaussian kernel ``[K, K]`` summing to 1 (K odd by default)."""
    if sigma <= 0:
        raise DegradationSpecError(f"blur sigma must be > 0, got {sigma}")
    size = size or 2 * math.ceil(3 * sigma) + 1
    c = size // 2
    r = torch.arange(size, dtype=torch.float64) - c
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def motion_kernel(length: float, angle: float, size: int | None = None) -> torch.Tensor:
    """Linear motion kernel ``[K, K]`` summing to 1: a line of ``length`` px at ``angle`` degrees
    through the kernel centre, drawn with bilinear splatting (sub-pixel lengths are fine)."""
    if length < 1:
        raise DegradationSpecError(f"motion length must be >= 1, got {length}")
    size = size or 2 * math.ceil(length / 2) + 1
    c = size // 2
    k = torch.zeros(size, size, dtype=torch.float64)
    theta = math.radians(angle)
    n = max(2, int(4 * length))
    for s in torch.linspace(-(length - 1) / 2, (length - 1) / 2, n).tolist():
        y, x = c - s * math.sin(theta), c + s * math.cos(theta)
        y0, x0 = math.floor(y), math.floor(x)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            yy, xx = y0 + dy, x0 + dx
            w = (1 - abs(y - yy)) * (1 - abs(x - xx))
            if 0 <= yy < size and 0 <= xx < size and w > 0:
                k[yy, xx] += w
    return (k / k.sum()).float()


def bicubic_filter(factor: int) -> torch.Tensor:
    """Separable Keys bicubic (a = -0.5) anti-alias filter ``[4F, 4F]`` for downsampling by F."""
    t = (torch.arange(4 * factor, dtype=torch.float64) - 2 * factor + 0.5) / factor
    a, at = -0.5, t.abs()
    w = torch.where(
        at <= 1,
        (a + 2) * at**3 - (a + 3) * at**2 + 1,
        torch.where(at < 2, a * at**3 - 5 * a * at**2 + 8 * a * at - 4 * a, torch.zeros_like(t)),
    )
    k = w[:, None] * w[None, :]
    return (k / k.sum()).float()


def random_kernel(rng: np.random.Generator, size: int = DEFAULT_KERNEL_GRID) -> torch.Tensor:
    """A synthetic blur kernel ``[size, size]`` for the kernel prior: half anisotropic Gaussians,
    half linear motion, centred at ``size // 2``."""
    c = size // 2
    if rng.random() < 0.5:
        sx, sy = rng.uniform(0.6, size / 6.5, size=2)
        theta = rng.uniform(0, math.pi)
        r = torch.arange(size, dtype=torch.float64) - c
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        k = torch.exp(-(u**2) / (2 * sx**2) - v**2 / (2 * sy**2))
        return (k / k.sum()).float()
    k = motion_kernel(rng.uniform(2, size - 3), rng.uniform(0, 180), size=size)
    return k


# --------------------------------------------------------------------------------------------
# Linear operators
# --------------------------------------------------------------------------------------------


class LinearOperator:
    """A linear map on image batches ``[B, 1, H, W] -> [B, 1, H', W']``, with its adjoint."""

    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_hw(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        """Image size that maps to an observation of size ``out_hw``."""
        return out_hw

    def lift(self, y: torch.Tensor) -> torch.Tensor:
        """A cheap image-grid estimate from ``y`` (the CDDB bridge's starting point)."""
        return y

    def spec(self) -> str:
        raise NotImplementedError

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        """``self @ other`` applies ``other`` first."""
        return Composed([other, self])


def _spectrum(kernel: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """FFT of ``kernel`` ``[..., K, K]`` placed on an ``hw`` grid with its centre at (0, 0)."""
    kh, kw = kernel.shape[-2:]
    H, W = hw
    if kh > H or kw > W:
        raise DegradationSpecError(f"blur kernel {kh}x{kw} is larger than the image {H}x{W}")
    pad = kernel.new_zeros(*kernel.shape[:-2], H, W)
    pad[..., :kh, :kw] = kernel
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(pad)


class Blur(LinearOperator):
    """Circular convolution with ``kernel`` ``[K, K]`` (one for all) or ``[B, 1, K, K]``."""

    def __init__(self, kernel: torch.Tensor, label: str = "custom") -> None:
        self.kernel = kernel
        self.label = label

    def _conv(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        k = self.kernel.to(device=x.device, dtype=x.dtype)
        spec = _spectrum(k, x.shape[-2:])
        if adjoint:
            spec = spec.conj()
        return torch.fft.irfft2(torch.fft.rfft2(x) * spec, s=x.shape[-2:])

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, adjoint=False)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._conv(y, adjoint=True)

    def spec(self) -> str:
        return self.label


class Downsample(LinearOperator):
    """Anti-alias filter (circular) then ``x[..., ::F, ::F]``; adjoint = zero-fill then filterᵀ."""

    def __init__(self, factor: int, filter: str = "bicubic") -> None:
        if factor not in (2, 3, 4, 8):
            raise DegradationSpecError(f"sr factor must be 2, 3, 4 or 8, got {factor}")
        if filter not in ("bicubic", "box", "none"):
            raise DegradationSpecError(f"sr filter must be bicubic, box or none, got {filter!r}")
        self.factor, self.filter = factor, filter
        kernels = {
            "bicubic": bicubic_filter(factor),
            "box": torch.full((factor, factor), 1.0 / factor**2),
        }
        self.blur = Blur(kernels[filter]) if filter in kernels else None

    def A(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise DegradationSpecError(
                f"image {H}x{W} is not a multiple of sr factor {self.factor}"
            )
        if self.blur is not None:
            x = self.blur.A(x)
        return x[..., :: self.factor, :: self.factor]

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        f = self.factor
        x = y.new_zeros(*y.shape[:-2], y.shape[-2] * f, y.shape[-1] * f)
        x[..., ::f, ::f] = y
        return self.blur.A_adjoint(x) if self.blur is not None else x

    def input_hw(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        return out_hw[0] * self.factor, out_hw[1] * self.factor

    def lift(self, y: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(y, scale_factor=self.factor, mode="bicubic")
        return up.clamp(0, 1)

    def spec(self) -> str:
        return f"sr:{self.factor}:filter={self.filter}"


@lru_cache(maxsize=64)
def _mask_array(kind: str, params: tuple[tuple[str, float], ...], H: int, W: int) -> np.ndarray:
    p = dict(params)
    m = np.ones((H, W), dtype=np.float32)
    rng = np.random.default_rng(int(p.get("seed", 0)))
    if kind == "box":
        side = int(round(p["size"] * min(H, W)))
        cy, cx = int(round(p["cy"] * H)), int(round(p["cx"] * W))
        m[
            max(0, cy - side // 2) : cy - side // 2 + side,
            max(0, cx - side // 2) : cx - side // 2 + side,
        ] = 0
    elif kind == "random":
        m[rng.random((H, W)) < p["p"]] = 0
    elif kind == "lines":
        width = int(p["width"])
        for x0 in rng.choice(W - width + 1, size=min(int(p["n"]), W - width + 1), replace=False):
            m[:, x0 : x0 + width] = 0
    return m


class Mask(LinearOperator):
    """Missing pixels: ``y = m * x`` with a 0/1 mask built from the SPEC for each image size."""

    DEFAULTS = {
        "box": {"size": 0.25, "cx": 0.5, "cy": 0.5},
        "random": {"p": 0.5, "seed": 0},
        "lines": {"n": 4, "width": 1, "seed": 0},
    }

    def __init__(self, kind: str, **params: float) -> None:
        if kind not in self.DEFAULTS:
            raise DegradationSpecError(f"unknown inpaint kind {kind!r} (box, random, lines)")
        unknown = set(params) - set(self.DEFAULTS[kind])
        if unknown:
            raise DegradationSpecError(f"inpaint:{kind} has no parameter(s) {sorted(unknown)}")
        self.kind = kind
        self.params = {**self.DEFAULTS[kind], **params}
        if kind == "random" and not 0 <= self.params["p"] < 1:
            raise DegradationSpecError("inpaint:random needs 0 <= p < 1")
        if kind == "box" and not 0 < self.params["size"] < 1:
            raise DegradationSpecError("inpaint:box needs 0 < size < 1")

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """The 0/1 mask ``[H, W]`` for an image shaped like ``like``."""
        key = tuple(sorted(self.params.items()))
        m = _mask_array(self.kind, key, *like.shape[-2:])
        return torch.from_numpy(m).to(device=like.device, dtype=like.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)

    A_adjoint = A

    def lift(self, y: torch.Tensor) -> torch.Tensor:
        """Fill the holes with each image's mean observed value."""
        m = self.mask(y)
        mean = (y * m).sum(dim=(-2, -1), keepdim=True) / m.sum().clamp_min(1)
        return y * m + mean * (1 - m)

    def spec(self) -> str:
        return f"inpaint:{self.kind}:" + ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())


class Identity(LinearOperator):
    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x

    A_adjoint = A

    def spec(self) -> str:
        return ""


class Composed(LinearOperator):
    """Operators applied in list order; the adjoint runs them backwards."""

    def __init__(self, ops: list[LinearOperator]) -> None:
        self.ops = [o for op in ops for o in (op.ops if isinstance(op, Composed) else [op])]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.A(x)
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            y = op.A_adjoint(y)
        return y

    def input_hw(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        for op in reversed(self.ops):
            out_hw = op.input_hw(out_hw)
        return out_hw

    def lift(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            y = op.lift(y)
        return y

    def spec(self) -> str:
        return "+".join(s for s in (op.spec() for op in self.ops) if s)


class UnknownBlur(Blur):
    """Blind blur: its kernel ``[B, 1, K, K]`` is set by the solver (``with_kernel``)."""

    def __init__(self, size: int = DEFAULT_KERNEL_GRID) -> None:
        super().__init__(torch.zeros(size, size), label=f"blur:unknown:size={size}")
        self.size = size

    def with_kernel(self, kernel: torch.Tensor) -> Blur:
        return Blur(kernel, label=self.label)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise DegradationSpecError("blur:unknown has no kernel: use BlindDPS, or a known blur")

    A_adjoint = A


# --------------------------------------------------------------------------------------------
# Noise models
# --------------------------------------------------------------------------------------------


class NoiseModel:
    """How ``y`` scatters around ``A x``; ``residual`` is the per-sample data-fit norm ``[B]``."""

    noise_free = True  # y = A x exactly

    def sample(self, ax: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return ax

    def weights(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Per-sample noise variance ``[B, 1, 1, 1]`` in the units of the ``weights``-weighted
        residual (for per-pixel weights normalised to mean 1: the harmonic mean of the
        per-pixel variances)."""
        return y.new_zeros(y.shape[0], 1, 1, 1)

    def residual(self, y: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||y - Ax||_W`` ``[B]`` (W = inverse noise variance, or identity)."""
        r2 = (y - ax) ** 2
        w = self.weights(y)
        if w is not None:
            r2 = r2 * w
        return r2.flatten(1).sum(1).clamp_min(1e-12).sqrt()

    def spec(self) -> str:
        return ""


class GaussianNoise(NoiseModel):
    def __init__(self, sigma: float) -> None:
        if sigma < 0:
            raise DegradationSpecError("noise sigma must be >= 0")
        self.sigma = sigma
        self.noise_free = sigma == 0

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        return y.new_full((y.shape[0], 1, 1, 1), self.sigma**2)

    def sample(self, ax: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(ax.shape, generator=generator, device=ax.device, dtype=ax.dtype)
        return ax + self.sigma * z

    def spec(self) -> str:
        return f"noise:gauss:sigma={_fmt(self.sigma)}"


class PoissonGaussianNoise(NoiseModel):
    """``y = Poisson(dose * Ax) / dose + read * N(0, 1)``; dose in photons per unit intensity.

    The data fit is a weighted least-squares residual with per-pixel weights
    ``1 / max(max(y, 0) / dose + read^2, 1 / dose^2)`` taken from the observation (fixed, so no
    gradient through them and no blow-up near zero, unlike DPS's ``1/|y|`` rescale), rescaled to
    mean 1 per image so step sizes carry over from the Gaussian case."""

    def __init__(self, dose: float, read: float = 0.0) -> None:
        if dose <= 0 or read < 0:
            raise DegradationSpecError("noise:poisson needs dose > 0 and read >= 0")
        self.dose, self.read = dose, read
        self.noise_free = False

    def sample(self, ax: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        counts = torch.poisson(self.dose * ax.clamp_min(0), generator=generator)
        z = torch.randn(ax.shape, generator=generator, device=ax.device, dtype=ax.dtype)
        return counts / self.dose + self.read * z

    def _inverse_variance(self, y: torch.Tensor) -> torch.Tensor:
        return 1.0 / (y.clamp_min(0) / self.dose + self.read**2).clamp_min(1.0 / self.dose**2)

    def weights(self, y: torch.Tensor) -> torch.Tensor:
        """Relative inverse variances (mean 1 per sample), so the norm stays in intensity units."""
        w = self._inverse_variance(y)
        return w / w.mean(dim=(-2, -1), keepdim=True)

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        return 1.0 / self._inverse_variance(y).mean(dim=(-2, -1), keepdim=True)

    def spec(self) -> str:
        return f"noise:poisson:dose={_fmt(self.dose)},read={_fmt(self.read)}"


# --------------------------------------------------------------------------------------------
# Degradation = operator + noise, and the SPEC parser
# --------------------------------------------------------------------------------------------


@dataclass
class Degradation:
    """A parsed SPEC: the linear operator, the noise model and whether the blur is unknown."""

    operator: LinearOperator
    noise: NoiseModel = field(default_factory=NoiseModel)

    @property
    def blind(self) -> bool:
        ops = self.operator.ops if isinstance(self.operator, Composed) else [self.operator]
        return any(isinstance(op, UnknownBlur) for op in ops)

    @property
    def noise_free(self) -> bool:
        """True when ``y = A x`` exactly (no noise term, or Gaussian noise of sigma 0)."""
        return self.noise.noise_free

    @property
    def spec(self) -> str:
        """Canonical SPEC with every parameter spelled out (used for provenance and bridge names)."""
        return "+".join(s for s in (self.operator.spec(), self.noise.spec()) if s) or "identity"

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.A(x)

    def simulate(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Degrade clean images ``x`` ``[B, 1, H, W]`` -> observations ``y`` (seeded noise)."""
        g = torch.Generator(device=x.device).manual_seed(seed)
        return self.noise.sample(self.A(x), g)

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample data-fit norm ``[B]`` of the estimate ``x`` against ``y``."""
        return self.noise.residual(y, self.A(x))

    def with_kernel(self, kernel: torch.Tensor) -> Degradation:
        """Replace the unknown blur with ``kernel`` ``[B, 1, K, K]`` (BlindDPS)."""
        ops = self.operator.ops if isinstance(self.operator, Composed) else [self.operator]
        ops = [op.with_kernel(kernel) if isinstance(op, UnknownBlur) else op for op in ops]
        return Degradation(Composed(ops), self.noise)

    def mirror_symmetric(self, hw: tuple[int, int]) -> bool:
        """True when mirroring the image left-right mirrors its observation: ``A(flip x) =
        flip(A x)`` on ``hw`` images (centred masks, symmetric kernels, noise alone), so the
        mirrored scan is a scan of the mirrored patient by the same scanner."""
        if self.blind:
            return False
        x = torch.rand((1, 1, *hw), generator=torch.Generator().manual_seed(0))
        return bool(torch.allclose(self.A(x.flip(-1)), self.A(x).flip(-1), atol=1e-5))

    def kernel_size(self) -> int:
        ops = self.operator.ops if isinstance(self.operator, Composed) else [self.operator]
        return next(op.size for op in ops if isinstance(op, UnknownBlur))


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _params(text: str, term: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, sep, val = item.partition("=")
        if not sep:
            raise DegradationSpecError(f"in {term!r}: expected key=value, got {item!r}")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            if key.strip() == "filter":
                out["filter"] = val.strip()  # type: ignore[assignment]
            else:
                raise DegradationSpecError(f"in {term!r}: {key}={val!r} is not a number") from None
    return out


def _take(params: dict, term: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    missing = [k for k in required if k not in params]
    extra = set(params) - set(required) - set(optional)
    if missing or extra:
        raise DegradationSpecError(
            f"{term!r}: needs {list(required)}"
            + (f", accepts {list(optional)}" if optional else "")
        )
    return params


def parse_term(term: str) -> LinearOperator | NoiseModel:
    """One SPEC term -> an operator or a noise model (see the module docstring)."""
    parts = term.strip().split(":")
    head = parts[0]
    if head == "sr":
        if len(parts) < 2 or not parts[1].isdigit():
            raise DegradationSpecError(f"{term!r}: expected sr:F, e.g. sr:4")
        p = _take(_params(":".join(parts[2:]), term), term, (), ("filter",))
        return Downsample(int(parts[1]), str(p.get("filter", "bicubic")))
    if len(parts) < 2:
        raise DegradationSpecError(f"{term!r}: expected family:kind[:params]")
    kind, p = parts[1], _params(":".join(parts[2:]), term)
    if head == "noise" and kind == "gauss":
        return GaussianNoise(_take(p, term, ("sigma",))["sigma"])
    if head == "noise" and kind == "poisson":
        p = _take(p, term, ("dose",), ("read",))
        return PoissonGaussianNoise(p["dose"], p.get("read", 0.0))
    if head == "blur" and kind == "gauss":
        p = _take(p, term, ("sigma",), ("size",))
        size = int(p["size"]) if "size" in p else None
        suffix = f",size={size}" if size else ""
        return Blur(
            gaussian_kernel(p["sigma"], size), f"blur:gauss:sigma={_fmt(p['sigma'])}{suffix}"
        )
    if head == "blur" and kind == "motion":
        p = _take(p, term, ("length", "angle"), ("size",))
        size = int(p["size"]) if "size" in p else None
        label = f"blur:motion:length={_fmt(p['length'])},angle={_fmt(p['angle'])}"
        return Blur(
            motion_kernel(p["length"], p["angle"], size), label + (f",size={size}" if size else "")
        )
    if head == "blur" and kind == "unknown":
        return UnknownBlur(int(_take(p, term, (), ("size",)).get("size", DEFAULT_KERNEL_GRID)))
    if head == "inpaint":
        return Mask(kind, **p)
    raise DegradationSpecError(
        f"unknown degradation {term!r}: use noise:gauss|poisson, blur:gauss|motion|unknown, sr:F, "
        "inpaint:box|random|lines"
    )


def parse_spec(spec: str) -> Degradation:
    """Parse a SPEC string (``+``-joined terms) into a :class:`Degradation`."""
    if not spec or not spec.strip():
        raise DegradationSpecError("empty degradation SPEC")
    ops: list[LinearOperator] = []
    noise: NoiseModel | None = None
    for term in spec.split("+"):
        parsed = parse_term(term)
        if isinstance(parsed, NoiseModel):
            if noise is not None:
                raise DegradationSpecError(f"{spec!r}: at most one noise term")
            noise = parsed
        else:
            ops.append(parsed)
    op: LinearOperator = Composed(ops) if len(ops) != 1 else ops[0]
    return Degradation(op if ops else Identity(), noise or NoiseModel())
