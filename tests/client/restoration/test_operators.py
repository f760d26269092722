"""Degradation operators: adjointness, agreement with deepinv 0.5, SPEC parsing and errors."""

from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from festa.client.restoration.errors import DegradationSpecError
from festa.client.restoration.operators import (
    Blur,
    Downsample,
    bicubic_filter,
    gaussian_kernel,
    motion_kernel,
    parse_spec,
    random_kernel,
)

LINEAR_SPECS = [
    "blur:gauss:sigma=2",
    "blur:motion:length=7,angle=30",
    "sr:2",
    "sr:4",
    "sr:4:filter=box",
    "sr:2:filter=none",
    "inpaint:box",
    "inpaint:random:p=0.5",
    "inpaint:lines",
    "blur:gauss:sigma=1.5+sr:2+inpaint:random:p=0.3",
]


def smooth_image(b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = 0.5 + 0.3 * torch.sin(6 * x) * torch.cos(4 * y) + 0.1 * x
    return img.expand(b, 1, h, w).clone()


@pytest.mark.parametrize("spec", LINEAR_SPECS)
def test_every_linear_operator_is_adjoint(spec: str) -> None:
    op = parse_spec(spec).operator
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
    ax = op.A(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    lhs = (ax * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-9), (lhs.item(), rhs.item())


def test_batched_kernel_blur_is_adjoint_and_differentiable_in_the_kernel() -> None:
    g = torch.Generator().manual_seed(2)
    k = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
    op = Blur(k)
    assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum())
    (op.A(x) ** 2).sum().backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()


@pytest.mark.parametrize(
    "kernel", [gaussian_kernel(2.0), motion_kernel(7, 30), torch.rand(5, 4), torch.rand(6, 6)]
)
def test_blur_matches_deepinv_circular_blur(kernel: torch.Tensor) -> None:
    x = smooth_image() + 0.1 * torch.rand(2, 1, 32, 32)
    ours = Blur(kernel).A(x)
    filt = kernel[None, None]
    theirs = dinv.physics.Blur(filter=filt, padding="circular").A(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    theirs_fft = dinv.physics.BlurFFT(img_size=(1, 32, 32), filter=filt).A(x)
    assert torch.allclose(ours, theirs_fft, atol=1e-5)
    adj = dinv.physics.Blur(filter=filt, padding="circular").A_adjoint(x)
    assert torch.allclose(Blur(kernel).A_adjoint(x), adj, atol=1e-5)


@pytest.mark.parametrize("factor,filt", [(2, "bicubic"), (4, "bicubic"), (2, "box"), (4, "none")])
def test_downsampling_matches_deepinv(factor: int, filt: str) -> None:
    x = smooth_image() + 0.1 * torch.rand(2, 1, 32, 32)
    ours = Downsample(factor, filt)
    kernel = {"bicubic": bicubic_filter(factor), "box": torch.full((factor, factor), 1 / factor**2)}
    dfilt = kernel[filt][None, None] if filt in kernel else None
    theirs = dinv.physics.Downsampling(
        img_size=(1, 32, 32), factor=factor, filter=dfilt, padding="circular"
    )
    assert torch.allclose(ours.A(x), theirs.A(x), atol=1e-5)
    if filt != "box":  # deepinv 0.5's circular conv_transpose fails on a 2x2 filter
        y = torch.rand(2, 1, 32 // factor, 32 // factor)
        assert torch.allclose(ours.A_adjoint(y), theirs.A_adjoint(y), atol=1e-5)


def test_our_bicubic_filter_equals_deepinvs() -> None:
    from deepinv.physics.blur import bicubic_filter as dinv_bicubic

    for factor in (2, 4):
        assert torch.allclose(bicubic_filter(factor), dinv_bicubic(factor)[0, 0], atol=1e-6)


def test_kernels_are_normalised_and_non_negative() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for k in [
        gaussian_kernel(1.3),
        motion_kernel(5.5, 100),
        *(random_kernel(rng) for _ in range(20)),
    ]:
        assert k.min() >= 0 and abs(k.sum().item() - 1) < 1e-5


def test_spec_round_trips_to_a_canonical_form() -> None:
    d = parse_spec("blur:gauss:sigma=2+noise:poisson:dose=2000,read=0.01")
    assert d.spec == "blur:gauss:sigma=2+noise:poisson:dose=2000,read=0.01"
    assert parse_spec(d.spec).spec == d.spec
    assert parse_spec("sr:4").spec == "sr:4:filter=bicubic"
    assert parse_spec("inpaint:box").spec == "inpaint:box:size=0.25,cx=0.5,cy=0.5"
    assert parse_spec("blur:unknown").blind and not parse_spec("blur:gauss:sigma=1").blind


def test_poisson_gaussian_noise_has_the_stated_variance() -> None:
    x = torch.full((4, 1, 64, 64), 0.5)
    d = parse_spec("noise:poisson:dose=200,read=0.05")
    y = d.simulate(x, seed=3)
    expected = 0.5 / 200 + 0.05**2
    assert abs(y.var().item() - expected) / expected < 0.1
    assert torch.equal(y, d.simulate(x, seed=3))
    # Relative weights: the residual of the truth is about sqrt(#pixels * variance) per sample.
    r = d.residual(y, x)
    assert r.shape == (4,) and ((r / (64 * expected**0.5) - 1).abs() < 0.15).all()


@pytest.mark.parametrize(
    "spec", ["noise:poisson:dose=200,read=0.01", "noise:gauss:sigma=0.02", "blur:gauss:sigma=1"]
)
def test_noise_variance_is_what_the_weighted_residual_of_the_truth_shows(spec: str) -> None:
    """``variance`` is in the units of the weighted residual: ||y - A x||_W^2 / #pixels."""
    ramp = torch.linspace(0.05, 0.95, 64).repeat(64, 1)  # bright and dark pixels alike
    x = ramp.expand(4, 1, 64, 64).contiguous()
    d = parse_spec(spec)
    y = d.simulate(x, seed=5)
    per_pixel = d.residual(y, x) ** 2 / (64 * 64)
    var = d.noise.variance(y).flatten()
    assert var.shape == (4,)
    if d.noise_free:
        assert (var == 0).all() and (per_pixel < 1e-10).all()
    else:
        assert ((per_pixel / var - 1).abs() < 0.1).all()


def test_masks_remove_what_they_say() -> None:
    x = torch.ones(1, 1, 64, 64)
    assert parse_spec("inpaint:box:size=0.25").A(x).sum() == 64 * 64 - 16 * 16
    frac = 1 - parse_spec("inpaint:random:p=0.5").A(x).mean().item()
    assert 0.45 < frac < 0.55
    cols = (parse_spec("inpaint:lines:n=3").A(x)[0, 0] == 0).all(dim=0).sum().item()
    assert cols == 3


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "blur",
        "blur:gauss",
        "blur:gauss:sigma=abc",
        "blur:gauss:sigma=-1",
        "sr:5",
        "sr:x",
        "inpaint:circle",
        "inpaint:random:p=1.5",
        "noise:gauss:sigma=0.1+noise:gauss:sigma=0.2",
        "blur:gauss:sigma=1,foo=2",
        "warp:zoom",
    ],
)
def test_bad_specs_raise_a_typed_error(spec: str) -> None:
    with pytest.raises(DegradationSpecError):
        parse_spec(spec)


def test_unknown_blur_cannot_be_applied_without_a_kernel() -> None:
    with pytest.raises(DegradationSpecError):
        parse_spec("blur:unknown").A(torch.zeros(1, 1, 32, 32))
    k = gaussian_kernel(1.0, 16)[None, None].expand(2, 1, 16, 16)
    out = parse_spec("blur:unknown").with_kernel(k).A(smooth_image())
    assert torch.allclose(out, Blur(gaussian_kernel(1.0, 16)).A(smooth_image()), atol=1e-6)
