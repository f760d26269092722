"""Async mode, round life cycle, checkpoints and TLS."""

from __future__ import annotations

import copy
import time

import grpc
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink
from festa.server import certs
from festa.server.body_service import TlsFiles
from festa.shared.model.split import LocalBodyLink
from festa.shared.wire.proto import body_pb2_grpc

from .conftest import run_concurrently, token

LR = 1e-2


def _step(link, gen: torch.Generator) -> torch.Tensor:
    out = link.forward(torch.randn(2, 16, 32, generator=gen))
    return link.backward(torch.randn(out.shape, generator=gen))


def test_async_applies_each_client_step_on_arrival(start_service, body):
    service, target = start_service(lr=LR)
    service.open_round(0, {"a": "cls", "b": "cls"}, train_body=True, mode="async")
    local_body = copy.deepcopy(body)
    local = LocalBodyLink(local_body)
    optimizer = torch.optim.AdamW(local_body.parameters(), lr=LR, weight_decay=0.01)
    remote_gen, local_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    with (
        RemoteBodyLink(target, token(0, "a")) as a,
        RemoteBodyLink(target, token(0, "b")) as b,
    ):
        for link in [a, b, a, b]:  # interleaved: each step sees the previous one's update
            got = _step(link, remote_gen)
            optimizer.zero_grad()
            want = _step(local, local_gen)
            optimizer.step()
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert service.close_round().steps == 4
    for got, want in zip(service.engine.body.parameters(), local_body.parameters(), strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


def test_async_serializes_concurrent_clients(start_service):
    service, target = start_service(lr=LR)
    nodes = ["a", "b", "c"]
    service.open_round(0, {n: "cls" for n in nodes}, train_body=True, mode="async")

    def client(node: str, seed: int) -> int:
        gen = torch.Generator().manual_seed(seed)
        with RemoteBodyLink(target, token(0, node)) as link:
            for _ in range(4):
                _step(link, gen)
        return 4

    assert (
        run_concurrently(*[lambda n=n, i=i: client(n, i) for i, n in enumerate(nodes)]) == [4] * 3
    )
    report = service.close_round()
    assert report.steps == 12 and report.dropped == {}


def test_close_round_ends_open_streams_and_records_absentees(start_service):
    service, target = start_service()
    service.open_round(4, {"here": "cls", "away": "cls"}, train_body=False, mode="async")
    link = RemoteBodyLink(target, token(4, "here")).open()
    link.evaluate(torch.zeros(1, 16, 32))
    report = service.close_round()
    assert report.dropped == {
        "here": "still connected when the round closed",
        "away": "never connected",
    }
    with pytest.raises(BodyServiceError) as caught:
        link.evaluate(torch.zeros(1, 16, 32))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    link.close()
    with pytest.raises(RuntimeError):
        service.close_round()


def test_state_dict_resumes_the_body_and_its_optimizer(start_service, body):
    first, first_target = start_service(lr=LR)
    first.open_round(0, {"a": "cls"}, train_body=True, mode="async")
    with RemoteBodyLink(first_target, token(0, "a")) as link:
        _step(link, torch.Generator().manual_seed(0))
    first.close_round()
    state = first.state_dict()

    second, second_target = start_service(lr=LR)  # starts from the original body
    second.load_state_dict(state)
    grads = []
    for service, target in [(first, first_target), (second, second_target)]:
        service.open_round(1, {"a": "cls"}, train_body=True, mode="async")
        with RemoteBodyLink(target, token(1, "a")) as link:
            grads.append(_step(link, torch.Generator().manual_seed(1)))
        service.close_round()
    assert torch.equal(grads[0], grads[1])
    for p, q in zip(first.engine.body.parameters(), second.engine.body.parameters(), strict=True):
        assert torch.equal(p, q)  # same weights and same Adam moments -> same second step


def test_train_body_false_freezes_the_body_but_returns_token_gradients(start_service, body):
    service, target = start_service(lr=LR)
    service.open_round(0, {"a": "cls"}, train_body=False)
    with RemoteBodyLink(target, token(0, "a")) as link:
        grad = _step(link, torch.Generator().manual_seed(0))
    service.close_round()
    assert float(grad.abs().sum()) > 0
    for p, q in zip(service.engine.body.parameters(), body.parameters(), strict=True):
        assert torch.equal(p, q)


def _deployment_tls(tmp_path) -> tuple[TlsFiles, bytes]:
    """The body service's identity issued by a deployment CA (`festa certs`), and the CA's PEM."""
    certs.init_ca(tmp_path)
    issued = certs.issue_server_cert(tmp_path, "body")
    return TlsFiles(issued.cert, issued.key), (tmp_path / "ca.pem").read_bytes()


def test_tls_serves_a_client_that_trusts_the_deployment_ca_only(body, config, tmp_path):
    from festa.server.body_service import BodyService

    from .conftest import RUN_ID, SECRET

    tls, root_cert = _deployment_tls(tmp_path)
    with BodyService(copy.deepcopy(body), config, secret=SECRET, lr=LR, run_id=RUN_ID) as service:
        port = service.start("127.0.0.1", 0, tls=tls)
        service.open_round(0, {"a": "cls", "b": "cls"}, train_body=False, mode="async")
        with RemoteBodyLink(f"localhost:{port}", token(0, "a"), tls_root_cert=root_cert) as link:
            out = link.evaluate(torch.ones(1, 16, 32))
        assert torch.allclose(out, LocalBodyLink(body).evaluate(torch.ones(1, 16, 32)), atol=1e-6)
        with pytest.raises(BodyServiceError) as caught:  # plaintext client: no handshake
            RemoteBodyLink(f"127.0.0.1:{port}", token(0, "b"), timeout_s=5).open()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_async_client_that_stalls_after_forward_releases_the_body(start_service):
    service, target = start_service(lr=LR)
    service.open_round(
        0, {"stalled": "cls", "b": "cls"}, train_body=True, mode="async", step_deadline_s=0.5
    )
    gen = torch.Generator().manual_seed(0)
    with RemoteBodyLink(target, token(0, "stalled")) as stalled:
        stalled.forward(torch.randn(2, 16, 32, generator=gen))  # holds the body ...
        with RemoteBodyLink(target, token(0, "b")) as b:
            _step(b, gen)  # ... until its backward deadline passes, then b is served
        with pytest.raises(BodyServiceError) as caught:
            stalled.backward(torch.randn(2, 16, 32, generator=gen))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no backward within 0.5 s" in caught.value.reason
    report = service.close_round()
    assert set(report.dropped) == {"stalled"} and report.steps == 1


def test_a_stream_that_never_says_hello_times_out(start_service):
    _, target = start_service(auth_timeout_s=0.3)
    service_channel = grpc.insecure_channel(target)

    def silent():
        time.sleep(2.0)
        yield from ()

    call = body_pb2_grpc.BodyServiceStub(service_channel).Session(silent(), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    service_channel.close()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Hello" in caught.value.details()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_body_with_bf16_autocast_matches_the_cpu_body(body, config):
    from festa.server.body_service import BodyService

    from .conftest import RUN_ID, SECRET

    tokens = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(0))
    want = LocalBodyLink(body).evaluate(tokens)
    with BodyService(
        copy.deepcopy(body),
        config,
        secret=SECRET,
        lr=LR,
        run_id=RUN_ID,
        device="cuda",
        autocast_bf16=True,
    ) as service:
        port = service.start("127.0.0.1", 0)
        service.open_round(0, {"a": "cls"}, train_body=True)
        with RemoteBodyLink(f"127.0.0.1:{port}", token(0, "a")) as link:
            out = link.forward(tokens)
            grad = link.backward(torch.ones_like(out))
            evaluated = link.evaluate(tokens)
        service.close_round()
    assert float((out - want).abs().max()) <= 5e-2 * float(want.abs().max())
    assert float((evaluated - want).abs().max()) <= 5e-2 * float(want.abs().max())
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
