"""The wire codec: round trips within each dtype's error bound, and every refusal."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from festa.shared.wire import (
    WIRE_DTYPES,
    BatchTooLarge,
    MessageTooLarge,
    NonFiniteTensor,
    ShapeMismatch,
    TokenLimits,
    TooManyTokens,
    UnknownDType,
    WireFormatError,
    WireTensor,
    decode,
    encode,
)

LIMITS = TokenLimits(embed_dim=32, max_tokens=16, max_batch=8, max_bytes=64 * 1024)


def _tokens(shape=(4, 16, 32), seed=0, scale=3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_round_trip_within_the_dtype_error_bound(dtype):
    tokens = _tokens()
    tokens[0, 0] = 0.0  # an all-zero token: int8 scale 0 must decode to zeros
    wire = encode(tokens, dtype)
    decoded = decode(wire, LIMITS)
    assert decoded.dtype == torch.float32 and decoded.shape == tokens.shape
    error = (decoded - tokens).abs()
    if dtype == "fp32":
        assert torch.equal(decoded, tokens)
    elif dtype == "fp16":  # 11-bit significand: relative rounding error <= 2^-11
        assert bool((error <= tokens.abs() * 2**-11 + 1e-7).all())
    elif dtype == "bf16":  # 8-bit significand: relative rounding error <= 2^-8
        assert bool((error <= tokens.abs() * 2**-8).all())
    else:  # int8: at most half a quantization step of that token's scale
        step = tokens.abs().amax(dim=-1, keepdim=True) / 127
        assert bool((error <= step / 2 + 1e-6).all())
        assert torch.equal(decoded[0, 0], torch.zeros(32))


@pytest.mark.parametrize(
    ("dtype", "bytes_per_value", "scale_bytes"),
    [("fp32", 4, 0), ("fp16", 2, 0), ("bf16", 2, 0), ("int8", 1, 4 * 4 * 16)],
)
def test_payload_size_per_dtype(dtype, bytes_per_value, scale_bytes):
    wire = encode(_tokens(), dtype)
    assert len(wire.data) == 4 * 16 * 32 * bytes_per_value
    assert len(wire.scales) == scale_bytes


def test_bf16_is_the_top_half_of_float32():
    values = torch.tensor([[[1.0, -2.5, 3.140625, 2.0**100]]])
    wire = encode(values, "bf16")
    words = np.frombuffer(wire.data, dtype="<u2")
    expected = (values.numpy().view(np.uint32) >> 16).astype(np.uint16).ravel()
    assert np.array_equal(words, expected)  # these values are exact in bf16


def test_unknown_dtype_is_refused_both_ways():
    with pytest.raises(UnknownDType):
        encode(_tokens(), "fp8")
    with pytest.raises(UnknownDType):
        decode(WireTensor("fp64", (1, 1, 32), b"\0" * 256))


def test_declared_shape_must_match_the_bytes():
    wire = encode(_tokens(), "fp32")
    with pytest.raises(ShapeMismatch, match="needs 8192 bytes, got 8188"):
        decode(replace(wire, data=wire.data[:-4]), LIMITS)
    with pytest.raises(ShapeMismatch):
        decode(replace(wire, shape=(4, 16, 16)))  # no limits: only the byte count is checked


def test_int8_needs_one_scale_per_token():
    wire = encode(_tokens(), "int8")
    with pytest.raises(ShapeMismatch, match="per-token scales"):
        decode(replace(wire, scales=wire.scales[:-4]), LIMITS)
    with pytest.raises(ShapeMismatch, match="carries no scales"):
        decode(replace(encode(_tokens(), "fp16"), scales=b"\0" * 4), LIMITS)


@pytest.mark.parametrize(
    ("shape", "error"),
    [
        ((4, 16), ShapeMismatch),  # not [B, N, D]
        ((4, 16, 32, 1), ShapeMismatch),
        ((4, 16, 24), ShapeMismatch),  # D differs from the body
        ((4, 17, 32), TooManyTokens),
        ((9, 16, 32), BatchTooLarge),
        ((0, 16, 32), BatchTooLarge),
    ],
)
def test_token_dims_must_fit_the_body(shape, error):
    wire = encode(torch.zeros(shape), "fp16")
    with pytest.raises(error):
        decode(wire, LIMITS)


def test_oversized_payload_is_refused_before_decoding():
    wire = encode(_tokens((8, 16, 32)), "fp32")  # 16 KiB
    with pytest.raises(MessageTooLarge):
        decode(wire, replace(LIMITS, max_bytes=16 * 1024 - 1))
    assert decode(wire, replace(LIMITS, max_bytes=16 * 1024)).shape == (8, 16, 32)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_on_decode(dtype, bad):
    tokens = _tokens()
    wire = encode(tokens, dtype)
    # Forge the bytes a careless or hostile sender would put on the wire.
    raw = tokens.numpy().copy()
    raw[1, 2, 3] = bad
    if dtype == "fp32":
        data = raw.astype("<f4").tobytes()
    elif dtype == "fp16":
        data = raw.astype("<f2").tobytes()
    else:
        data = (raw.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    with pytest.raises(NonFiniteTensor):
        decode(replace(wire, data=data), LIMITS)


def test_int8_scales_must_be_finite_and_non_negative():
    wire = encode(_tokens(), "int8")
    scales = np.frombuffer(wire.scales, dtype="<f4").copy()
    for bad in (math.nan, math.inf, -1.0):
        forged = scales.copy()
        forged[5] = bad
        with pytest.raises(NonFiniteTensor):
            decode(replace(wire, scales=forged.tobytes()), LIMITS)


def test_encode_refuses_values_it_cannot_send():
    tokens = _tokens()
    tokens[0, 0, 0] = math.nan
    for dtype in WIRE_DTYPES:
        with pytest.raises(NonFiniteTensor):
            encode(tokens, dtype)
    with pytest.raises(NonFiniteTensor, match="float16 range"):
        encode(torch.full((1, 1, 32), 1e5), "fp16")


def test_every_refusal_is_a_wire_format_error():
    for cls in (UnknownDType, ShapeMismatch, BatchTooLarge, TooManyTokens, NonFiniteTensor):
        assert issubclass(cls, WireFormatError)
    assert issubclass(MessageTooLarge, WireFormatError)
