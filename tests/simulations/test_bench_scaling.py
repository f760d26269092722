"""The scaling benchmark's measurements: a real body service process, real gRPC clients."""

from __future__ import annotations

import math
import multiprocessing as mp
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from festa.shared.config import ModelConfig, model_preset
from festa.shared.model.body import Body
from festa.simulations.bench_scaling import (
    _peak_rss_bytes,
    _rss_bytes,
    body_flops_per_token,
    body_throughput,
    matmul_peak,
)

MICRO = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def test_throughput_and_memory_of_a_real_body_service() -> None:
    result = body_throughput(MICRO, clients=2, mode="sync", batch=2, steps=2, warmup=1)
    assert result.tokens == 2 * 2 * 2 * MICRO.num_tokens
    values = (result.tokens_per_s, result.wall_s, result.cpu_s, result.rss_idle, result.rss_peak)
    for value in values:
        assert math.isfinite(value) and value > 0
    # The peak covers the idle state, and the server holds at least the body and its optimizer.
    assert result.rss_peak >= result.rss_idle
    params = sum(p.numel() for p in Body(MICRO).parameters())
    assert result.rss_idle > 3 * 4 * params


def test_flops_per_token_match_torch_flop_counter() -> None:
    """Independent count: torch's FlopCounterMode over a forward + backward of the real body
    (explicit attention matmuls, which the counter sees, instead of the fused kernel)."""
    config = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    body = Body(config)
    for block in body.blocks:
        block.attn.fused_attn = False
    batch = 3
    tokens = torch.randn(batch, config.num_tokens, config.embed_dim, requires_grad=True)
    with FlopCounterMode(display=False) as forward_only:
        body(tokens)
    with FlopCounterMode(display=False) as training:
        out = body(tokens)
        out.backward(torch.randn_like(out))
    count = batch * config.num_tokens
    assert forward_only.get_total_flops() == count * body_flops_per_token(config, training=False)
    assert training.get_total_flops() == count * body_flops_per_token(config)


def test_flops_per_token_hand_count_of_the_base_preset() -> None:
    # ViT-B/16 at 224 px: per block 2 * 12 * 768^2 linear + 4 * 196 * 768 attention, 12 blocks.
    config = model_preset("base")
    forward = 12 * (2 * 12 * 768 * 768 + 4 * 196 * 768)
    assert body_flops_per_token(config, training=False) == forward
    assert body_flops_per_token(config) == 3 * forward


def test_matmul_peak_is_a_positive_rate() -> None:
    peak = matmul_peak("cpu", torch.float32, size=128, seconds=0.05)
    assert math.isfinite(peak) and peak > 0


def _report_memory(queue) -> None:
    queue.put((_peak_rss_bytes(), _rss_bytes()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_a_spawned_server_reports_its_own_peak_memory_not_its_parents() -> None:
    """ru_maxrss of a spawned child starts at its parent's resident size; the server's peak
    must not (the parent here holds 600 MB that the child never allocates)."""
    held = bytearray(600 * 1024 * 1024)
    held[::4096] = b"\x01" * len(range(0, len(held), 4096))  # touch every page
    parent = _rss_bytes()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_report_memory, args=(queue,))
    child.start()
    peak, now = queue.get(timeout=120)
    child.join()
    assert now > 0 and peak > 0
    assert peak < parent - 300 * 1024 * 1024, (peak, parent)
    del held
