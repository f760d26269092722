"""The user-space WAN link: bytes intact both ways, latency lower bound, gRPC over it."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from festa.server.body_service import BodyService, issue_token
from festa.shared.config import ModelConfig
from festa.shared.model.body import Body
from festa.simulations.netem import WanLink

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP server on loopback that returns every byte it reads, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    stop.set()
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _round_trip(port: int, payload: bytes) -> bytes:
    """Send `payload` through the link and read the same number of bytes back."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        received = bytearray()

        def read() -> None:
            while len(received) < len(payload):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        sock.sendall(payload)
        reader.join(30)
        return bytes(received)


def test_bytes_arrive_intact_both_ways_over_many_concurrent_connections(echo_server):
    rng = random.Random(0)
    payloads = [rng.randbytes(rng.randint(1, 300_000)) for _ in range(16)]
    results: list[bytes | None] = [None] * len(payloads)
    with WanLink(echo_server, rtt_ms=10, rate_mbit=400) as wan:

        def run(i: int) -> None:
            results[i] = _round_trip(wan.port, payloads[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert wan.proxy.connections == len(payloads)
    assert results == payloads
    assert wan.proxy.bytes_up == wan.proxy.bytes_down == sum(map(len, payloads))


def test_a_round_trip_is_never_faster_than_the_rtt_and_a_transfer_than_the_rate(echo_server):
    with WanLink(echo_server, rtt_ms=60, rate_mbit=16) as wan:
        started = time.perf_counter()
        assert _round_trip(wan.port, b"x") == b"x"
        assert time.perf_counter() - started >= 0.060
        payload = bytes(200_000)  # 1.6 Mbit each way at 16 Mbit/s: >= 0.1 s + RTT
        started = time.perf_counter()
        assert _round_trip(wan.port, payload) == payload
        assert time.perf_counter() - started >= 0.1 + 0.060


def test_a_lossy_link_retransmits_late_but_delivers_every_byte_in_order(echo_server):
    payload = random.Random(1).randbytes(400_000)  # several 64 KiB chunks each way
    with WanLink(echo_server, rtt_ms=2, rate_mbit=0, loss=0.5, rto_ms=5, seed=3) as lossy:
        assert _round_trip(lossy.port, payload) == payload
    with WanLink(echo_server, rtt_ms=2, rate_mbit=0) as clean:
        assert _round_trip(clean.port, payload) == payload
    assert lossy.proxy.lost_chunks > 0 and clean.proxy.lost_chunks == 0
    with pytest.raises(ValueError, match="loss"):
        WanLink(echo_server, rtt_ms=1, rate_mbit=0, loss=1.0)


def test_stop_closes_the_listener_and_open_connections(echo_server):
    wan = WanLink(echo_server, rtt_ms=0, rate_mbit=0)
    port = wan.start()
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"hello")
    assert client.recv(5) == b"hello"
    wan.stop()
    client.settimeout(5)
    assert client.recv(5) == b""  # the proxy closed its side
    client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_body_service_step_runs_over_the_link():
    from festa.client.body_client import RemoteBodyLink

    config = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    with BodyService(Body(config), config, secret=b"s", lr=1e-3, run_id="r") as service:
        port = service.start("127.0.0.1", 0)
        service.open_round(0, {"site": "cls"}, train_body=True)
        tok = issue_token(b"s", "r", 0, "site", "cls", ttl_s=60)
        tokens = torch.randn(2, config.num_tokens, config.embed_dim)
        with WanLink(("127.0.0.1", port), rtt_ms=20, rate_mbit=100) as wan:
            with RemoteBodyLink(wan.address, tok) as link:
                out = link.forward(tokens)
                grad = link.backward(torch.ones_like(out))
        report = service.close_round()
    assert out.shape == grad.shape == tokens.shape
    assert report.dropped == {} and report.steps == 1


def test_the_cli_proxies_until_stopped(echo_server):
    with socket.socket() as probe:  # a free port for the CLI to listen on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host, target_port = echo_server
    proc = subprocess.Popen(
        [sys.executable, "-m", "festa.simulations.netem", "--listen", f"127.0.0.1:{port}"]
        + ["--target", f"{host}:{target_port}", "--rtt-ms", "5", "--rate-mbit", "100"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "netem 127.0.0.1" in proc.stderr.readline()
        assert _round_trip(port, b"over the cli") == b"over the cli"
    finally:
        proc.terminate()
        proc.wait(10)
