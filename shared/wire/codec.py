"""Tensor codec for the body-service wire (DESIGN §3).

A tensor travels as a small header (dtype, shape, per-token scales) plus raw little-endian
bytes. Four wire dtypes:

| dtype | bytes per value | how                                                              |
|-------|-----------------|------------------------------------------------------------------|
| fp32  | 4               | IEEE float32                                                     |
| fp16  | 2               | IEEE float16 (values beyond ±65504 are refused, not sent as inf) |
| bf16  | 2               | the upper 16 bits of float32, rounded to nearest even            |
| int8  | 1 (+4 per token)| symmetric per-token quantization: x ≈ q * scale, scale = max|x|/127 |

This module knows nothing about protobuf or gRPC: `WireTensor` is a plain dataclass that the
transport copies into and out of its own messages. Every decode is validated, and every
refusal is a typed `WireFormatError` whose message says what was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

WireDType = Literal["fp32", "fp16", "bf16", "int8"]
WIRE_DTYPES: tuple[str, ...] = get_args(WireDType)

_BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
_INT8_MAX = 127.0


class WireFormatError(ValueError):
    """A tensor on the wire is malformed or outside the limits; the message says why."""


class UnknownDType(WireFormatError):
    """The header names a dtype this codec does not speak."""


class ShapeMismatch(WireFormatError):
    """Declared shape disagrees with the byte count, or dims disagree with the body."""


class BatchTooLarge(WireFormatError):
    """More samples in one message than the service accepts."""


class TooManyTokens(WireFormatError):
    """More tokens per sample than the model has."""


class NonFiniteTensor(WireFormatError):
    """NaN or infinity in the values (or in the int8 scales)."""


class MessageTooLarge(WireFormatError):
    """The payload is bigger than the message-size limit."""


@dataclass(frozen=True)
class WireTensor:
    """One tensor as it crosses the wire: header fields plus raw little-endian bytes.

    `scales` is empty except for int8, where it holds one float32 per token (`B*N` values).
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes
    scales: bytes = b""

    @property
    def nbytes(self) -> int:
        """Payload size (values plus scales), the quantity the size limit applies to."""
        return len(self.data) + len(self.scales)


@dataclass(frozen=True)
class TokenLimits:
    """What a token tensor must look like to enter the body: `[B, N, D]` with these bounds."""

    embed_dim: int
    max_tokens: int
    max_batch: int
    max_bytes: int


def encode(tensor: torch.Tensor, dtype: str = "fp32") -> WireTensor:
    """Encode a float tensor of any shape (e.g. tokens `[B, N, D]`) for the wire.

    Raises `UnknownDType` for an unsupported dtype and `NonFiniteTensor` if the values (or,
    for fp16, their rounding) are not finite. int8 needs at least one dimension: the last one
    is the token's feature axis and gets one scale per leading index.
    """
    _check_dtype(dtype)
    values = tensor.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteTensor("tensor holds NaN or infinite values; refusing to send it")
    shape = tuple(int(s) for s in values.shape)
    if dtype == "fp32":
        return WireTensor(dtype, shape, np.asarray(values.numpy(), dtype="<f4").tobytes())
    if dtype == "fp16":
        with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
            half = values.numpy().astype("<f2")
        if not np.isfinite(half).all():
            raise NonFiniteTensor("values exceed the float16 range (±65504); use fp32 or bf16")
        return WireTensor(dtype, shape, half.tobytes())
    if dtype == "bf16":
        words = values.to(torch.bfloat16).view(torch.int16).numpy()
        return WireTensor(dtype, shape, words.astype("<i2").tobytes())
    # int8, one symmetric scale per token (per index of all but the last dim).
    if values.dim() == 0:
        raise ShapeMismatch("int8 needs a tensor with a feature axis, got a scalar")
    rows = values.reshape(-1, shape[-1]) if shape[-1] else values.reshape(-1, 0)
    scales = rows.abs().amax(dim=1) / _INT8_MAX if rows.shape[1] else torch.zeros(rows.shape[0])
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(rows / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return WireTensor(
        dtype,
        shape,
        q.numpy().tobytes(),
        np.asarray(scales.numpy(), dtype="<f4").tobytes(),
    )


def decode(wire: WireTensor, limits: TokenLimits | None = None) -> torch.Tensor:
    """Validate and decode a `WireTensor` into a float32 CPU tensor of its declared shape.

    With `limits`, the tensor must be tokens `[B, N, D]` with D == embed_dim,
    1 <= N <= max_tokens, 1 <= B <= max_batch and payload <= max_bytes. Raises a
    `WireFormatError` subclass naming the fault; nothing is decoded until the header checks pass.
    """
    _check_dtype(wire.dtype)
    if limits is not None:
        check_token_header(wire, limits)
    shape = wire.shape
    if any(s < 0 for s in shape):
        raise ShapeMismatch(f"negative dimension in declared shape {list(shape)}")
    count = math.prod(shape)
    expected = count * _BYTES_PER_VALUE[wire.dtype]
    if len(wire.data) != expected:
        raise ShapeMismatch(
            f"declared shape {list(shape)} in {wire.dtype} needs {expected} bytes, "
            f"got {len(wire.data)}"
        )
    if wire.dtype == "int8":
        values = _decode_int8(wire, count)
    else:
        if wire.scales:
            raise ShapeMismatch(f"{wire.dtype} carries no scales, got {len(wire.scales)} bytes")
        values = _decode_float(wire)
    tensor = torch.from_numpy(values).reshape(shape)
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteTensor(f"{wire.dtype} tensor of shape {list(shape)} holds NaN or inf")
    return tensor


def check_token_header(wire: WireTensor, limits: TokenLimits) -> None:
    """Refuse a header that cannot be body tokens `[B, N, D]`, before touching the payload."""
    if wire.nbytes > limits.max_bytes:
        raise MessageTooLarge(
            f"payload of {wire.nbytes} bytes exceeds the {limits.max_bytes} limit"
        )
    if len(wire.shape) != 3:
        raise ShapeMismatch(f"tokens must be [B, N, D], got shape {list(wire.shape)}")
    batch, tokens, dim = wire.shape
    if dim != limits.embed_dim:
        raise ShapeMismatch(f"token dim D={dim} does not match the body's {limits.embed_dim}")
    if tokens < 1 or tokens > limits.max_tokens:
        raise TooManyTokens(f"N={tokens} tokens per sample; allowed 1..{limits.max_tokens}")
    if batch < 1 or batch > limits.max_batch:
        raise BatchTooLarge(f"batch B={batch}; allowed 1..{limits.max_batch}")


def _check_dtype(dtype: str) -> None:
    if dtype not in _BYTES_PER_VALUE:
        raise UnknownDType(f"unknown wire dtype {dtype!r}; choose one of {list(WIRE_DTYPES)}")


def _decode_float(wire: WireTensor) -> np.ndarray:
    if wire.dtype == "fp32":
        return np.frombuffer(wire.data, dtype="<f4").astype(np.float32)
    if wire.dtype == "fp16":
        return np.frombuffer(wire.data, dtype="<f2").astype(np.float32)
    # bf16: the 16 bits are the top half of a float32.
    words = np.frombuffer(wire.data, dtype="<u2").astype(np.uint32) << 16
    return words.view(np.float32)


def _decode_int8(wire: WireTensor, count: int) -> np.ndarray:
    shape = wire.shape
    if not shape:
        raise ShapeMismatch("int8 needs a tensor with a feature axis, got a scalar")
    rows = count // shape[-1] if shape[-1] else math.prod(shape[:-1])
    if len(wire.scales) != 4 * rows:
        raise ShapeMismatch(
            f"int8 shape {list(shape)} needs {rows} per-token scales ({4 * rows} bytes), "
            f"got {len(wire.scales)} bytes"
        )
    scales = np.frombuffer(wire.scales, dtype="<f4").astype(np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise NonFiniteTensor("int8 scales must be finite and non-negative")
    values = np.frombuffer(wire.data, dtype="i1").astype(np.float32).reshape(rows, -1)
    values *= scales[:, None]
    return values.reshape(-1)
