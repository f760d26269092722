"""A real body service on 127.0.0.1 with a tiny body, and the client pieces that talk to it."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from torch import nn

from festa.server.body_service import BodyService, issue_token
from festa.shared.config import ModelConfig
from festa.shared.model.body import Body
from festa.shared.model.head import Head
from festa.shared.wire.proto import body_pb2, body_pb2_grpc

REPO_ROOT_FOR_SUBPROCESS = str(Path(__file__).resolve().parents[3])
SECRET = b"test-secret-for-the-body-service"
RUN_ID = "run-test"


@pytest.fixture
def config() -> ModelConfig:
    """image 32, patch 8 -> 16 tokens of dim 32; 2 blocks of 2 heads."""
    return ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


class MeanTail(nn.Module):
    """A trivial tail: mean over tokens, then a linear map to one value per image."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.mean(dim=1))


def mse_loss(outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    return ((outputs - batch["target"]) ** 2).mean()


def make_batch(config: ModelConfig, size: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(size, 1, config.image_size, config.image_size, generator=gen),
        "target": torch.randn(size, 1, generator=gen),
    }


def make_head_tail(config: ModelConfig, seed: int) -> tuple[Head, MeanTail]:
    torch.manual_seed(seed)
    return Head(config), MeanTail(config.embed_dim)


@pytest.fixture
def body(config: ModelConfig) -> Body:
    torch.manual_seed(1234)
    return Body(config)


@pytest.fixture
def start_service(
    body: Body, config: ModelConfig
) -> Iterator[Callable[..., tuple[BodyService, str]]]:
    """Start a BodyService on a free loopback port around a copy of `body`; stopped after the test."""
    started: list[BodyService] = []

    def start(**kwargs: Any) -> tuple[BodyService, str]:
        kwargs.setdefault("lr", 1e-2)
        service = BodyService(copy.deepcopy(body), config, secret=SECRET, run_id=RUN_ID, **kwargs)
        port = service.start("127.0.0.1", 0)
        started.append(service)
        return service, f"127.0.0.1:{port}"

    yield start
    for service in started:
        service.stop(grace_s=0)


def token(round_id: int, node_id: str, task: str = "cls", ttl_s: float = 60.0, **kw: Any) -> str:
    return issue_token(SECRET, RUN_ID, round_id, node_id, task, ttl_s, **kw)


def run_concurrently(*fns: Callable[[], Any], timeout_s: float = 60.0) -> list[Any]:
    """Run each function in its own thread; return their results or raise the first error."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def runner(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(fns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
        assert not thread.is_alive(), "a client thread hung"
    if errors:
        raise errors[0]
    return results


def start_client_process(
    script: str, target: str, node: str, round_id: int = 1
) -> subprocess.Popen:
    """Run `script` (argv: target, session token) as a separate client process; stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-c", script, target, token(round_id, node)],
        cwd=REPO_ROOT_FOR_SUBPROCESS,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class IdleStreams:
    """`n` body-service streams on `channel` that never send a message, so never authenticate
    (with `metadata`, they carry it as the opening headers); held open until `close()`.
    `refused` collects the status codes of those the server ended."""

    def __init__(
        self, channel: grpc.Channel, n: int, metadata: list[tuple[str, str]] | None = None
    ):
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.refused: list[grpc.StatusCode] = []
        stub = body_pb2_grpc.BodyServiceStub(channel)
        self.calls = [
            stub.Session(self._silent(), timeout=300, metadata=metadata) for _ in range(n)
        ]
        for call in self.calls:
            threading.Thread(target=self._watch, args=(call,), daemon=True).start()

    def _silent(self) -> Iterator[body_pb2.ClientMessage]:
        self._release.wait()
        yield from ()

    def _watch(self, call: Any) -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            if not self._release.is_set():
                with self._lock:
                    self.refused.append(exc.code())

    def count_refused(self) -> int:
        with self._lock:
            return len(self.refused)

    def close(self) -> None:
        self._release.set()
        for call in self.calls:
            call.cancel()
