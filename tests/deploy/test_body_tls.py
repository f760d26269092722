"""The body service as deployed: mutual TLS with certificates from the deployment CA (`festa
certs`); sites pin that CA and present their client certificate; plaintext clients, clients
without a certificate and clients with a foreign CA's certificate are refused; stolen, foreign
and expired session tokens are refused over TLS; idle unauthenticated streams lock nobody out
(the same admission as the loopback simulation, tests/server/body_service/test_admission.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink
from festa.server import certs
from festa.server.body_service import BodyService, TlsFiles, issue_token
from festa.shared.config import ModelConfig
from festa.shared.model.body import Body
from tests.server.body_service.conftest import RUN_ID as BODY_TEST_RUN
from tests.server.body_service.conftest import SECRET as BODY_TEST_SECRET
from tests.server.body_service.conftest import IdleStreams, wait_for
from tests.server.body_service.test_admission import serve_a_round

SECRET = b"deploy-test-secret"
RUN = "run-tls"
CONFIG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
MAX_STREAMS = 3


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    certs.init_ca(d)
    certs.issue_server_cert(d, "body")
    certs.issue_client_cert(d, "site-a")
    other = d / "other-ca"
    certs.init_ca(other)
    certs.issue_client_cert(other, "site-a")  # same site name, foreign CA
    return d


def _tls(ca_dir: Path) -> TlsFiles:
    return TlsFiles(ca_dir / "body.pem", ca_dir / "body.key", client_ca=ca_dir / "ca.pem")


def _identity(d: Path) -> tuple[bytes, bytes]:
    return (d / "clients" / "site-a.pem").read_bytes(), (d / "clients" / "site-a.key").read_bytes()


@pytest.fixture
def service(ca_dir: Path) -> Iterator[tuple[BodyService, str]]:
    torch.manual_seed(0)
    svc = BodyService(Body(CONFIG), CONFIG, secret=SECRET, run_id=RUN, lr=1e-3)
    port = svc.start("127.0.0.1", 0, tls=_tls(ca_dir))
    svc.open_round(
        1, {"node-a": "classification", "node-b": "segmentation"}, train_body=False, mode="async"
    )
    try:
        yield svc, f"127.0.0.1:{port}"
    finally:
        svc.stop()


def _token(node: str, task: str, **kw: float) -> str:
    return issue_token(SECRET, RUN, 1, node, task, ttl_s=kw.pop("ttl_s", 60.0), **kw)


def _link(
    target: str, token: str, ca: Path | None, identity: tuple[bytes, bytes] | None
) -> RemoteBodyLink:
    root = ca.read_bytes() if ca is not None else None
    return RemoteBodyLink(target, token, tls_root_cert=root, tls_client_cert=identity, timeout_s=20)


def test_a_site_pinning_the_ca_with_its_certificate_gets_through_and_computes(service, ca_dir):
    _, target = service
    token = _token("node-a", "classification")
    with _link(target, token, ca_dir / "ca.pem", _identity(ca_dir)) as link:
        out = link.evaluate(torch.randn(2, CONFIG.num_tokens, CONFIG.embed_dim))
    assert out.shape == (2, CONFIG.num_tokens, CONFIG.embed_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: _token("node-a", "classification", ttl_s=1.0, now=1000.0), "expired"),
        (lambda: _token("node-z", "classification"), "not in round"),  # another (unlisted) node
        (
            lambda: _token("node-b", "classification"),
            "not in round",
        ),  # another node's id, wrong task
        (
            lambda: issue_token(b"not-the-server", RUN, 1, "node-a", "classification", 60.0),
            "signature",
        ),
    ],
)
def test_bad_tokens_are_refused_over_tls(service, ca_dir, token, why):
    _, target = service
    with pytest.raises(BodyServiceError) as exc:
        _link(target, token(), ca_dir / "ca.pem", _identity(ca_dir)).open()
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED and why in str(exc.value)


def test_a_copied_token_is_refused_while_its_node_is_connected(service, ca_dir):
    _, target = service
    token = _token("node-b", "segmentation")
    with _link(target, token, ca_dir / "ca.pem", _identity(ca_dir)):
        with pytest.raises(BodyServiceError) as exc:
            _link(target, token, ca_dir / "ca.pem", _identity(ca_dir)).open()
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("server_ca", "client_cert"),
    [(None, None), ("other-ca", "."), (".", None), (".", "other-ca")],
    ids=["plaintext", "untrusted-server-ca", "no-client-cert", "foreign-ca-client-cert"],
)
def test_only_a_client_certificate_from_the_deployment_ca_reaches_the_port(
    service, ca_dir, server_ca, client_cert
):
    svc, target = service
    ca = ca_dir / server_ca / "ca.pem" if server_ca else None
    identity = _identity(ca_dir / client_cert) if client_cert else None
    link = _link(target, _token("node-a", "classification"), ca, identity)
    with pytest.raises(BodyServiceError) as exc:
        link.open()
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE
    assert svc.slots_in_use() == {"authenticated": 0, "pending": 0}  # refused before any slot
    assert set(svc.close_round().dropped) == {"node-a", "node-b"}  # neither ever connected


def test_idle_unauthenticated_streams_over_mutual_tls_lock_nobody_out(ca_dir):
    """A peer with a valid client certificate (a compromised site) holds twice the slot limit
    of streams that never authenticate; the sites' round is still served."""
    svc = BodyService(
        Body(CONFIG),
        CONFIG,
        secret=BODY_TEST_SECRET,
        run_id=BODY_TEST_RUN,
        lr=1e-2,
        max_streams=MAX_STREAMS,
        max_pending=2,
        auth_timeout_s=300,
    )
    port = svc.start("127.0.0.1", 0, tls=_tls(ca_dir))
    target = f"127.0.0.1:{port}"
    cert, key = _identity(ca_dir)
    credentials = grpc.ssl_channel_credentials((ca_dir / "ca.pem").read_bytes(), key, cert)
    channel = grpc.secure_channel(target, credentials)
    idle = IdleStreams(channel, 2 * MAX_STREAMS)
    try:
        wait_for(lambda: idle.count_refused() == 2 * MAX_STREAMS - 2, "refusals beyond pending")
        link_kwargs = {
            "tls_root_cert": (ca_dir / "ca.pem").read_bytes(),
            "tls_client_cert": (cert, key),
        }
        serve_a_round(svc, target, CONFIG, "sync", link_kwargs)
        assert svc.slots_in_use() == {"authenticated": 0, "pending": 2}
    finally:
        idle.close()
        channel.close()
        svc.stop()
