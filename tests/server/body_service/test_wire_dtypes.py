"""Every wire dtype goes through the service and back within its error bound."""

from __future__ import annotations

import pytest
import torch

from festa.client.body_client import RemoteBodyLink
from festa.shared.model.split import LocalBodyLink
from festa.shared.wire import WIRE_DTYPES

from .conftest import token

# Max error relative to the largest magnitude, for the body output and the token gradient
# (both directions quantized; the body mixes the input error into every token).
BOUNDS = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 3e-2, "int8": 5e-2}


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_each_wire_dtype_round_trips_through_the_service(start_service, body):
    service, target = start_service()
    service.open_round(0, {d: "cls" for d in WIRE_DTYPES}, train_body=False, mode="async")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 16, 32, generator=gen)
    grad_output = torch.randn(3, 16, 32, generator=gen) * 1e-3  # gradients are small
    local = LocalBodyLink(body)
    want_out = local.forward(tokens)
    want_grad = local.backward(grad_output)
    want_eval = local.evaluate(tokens)
    sent = {}
    for dtype in WIRE_DTYPES:
        with RemoteBodyLink(target, token(0, dtype), wire_dtype=dtype) as link:
            out = link.forward(tokens)
            grad = link.backward(grad_output)
            evaluated = link.evaluate(tokens)
        sent[dtype] = link.bytes_sent  # after close: includes the Done message
        assert _relative_error(out, want_out) <= BOUNDS[dtype], dtype
        assert _relative_error(grad, want_grad) <= BOUNDS[dtype], dtype
        assert _relative_error(evaluated, want_eval) <= BOUNDS[dtype], dtype
    report = service.close_round()
    assert report.dropped == {}
    # Bytes follow the dtype: 2-byte floats halve fp32, int8 is a quarter plus its scales.
    assert abs(sent["fp16"] - sent["bf16"]) < 64  # the tokens in Hello differ a little
    assert sent["fp16"] < 0.55 * sent["fp32"]
    assert sent["int8"] < 0.35 * sent["fp32"]
    assert report.bytes_in == sent


def test_an_unknown_wire_dtype_is_refused_by_the_client():
    with pytest.raises(ValueError, match="wire_dtype"):
        RemoteBodyLink("127.0.0.1:1", "token", wire_dtype="fp8")
