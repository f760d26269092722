"""The body service as deployed: TLS with a certificate from the deployment CA (`festa certs`);
sites pin that CA; stolen, foreign and expired session tokens are refused over TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink
from festa.server import certs
from festa.server.body_service import BodyService, issue_token
from festa.server.body_service.service import TlsFiles
from festa.shared.config import ModelConfig
from festa.shared.model.body import Body

SECRET = b"deploy-test-secret"
RUN = "run-tls"
CONFIG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    certs.init_ca(d)
    certs.issue_server_cert(d, "body")
    other = d / "other-ca"
    certs.init_ca(other)
    return d


@pytest.fixture
def service(ca_dir: Path) -> Iterator[tuple[BodyService, str]]:
    torch.manual_seed(0)
    svc = BodyService(Body(CONFIG), CONFIG, secret=SECRET, run_id=RUN, lr=1e-3)
    port = svc.start("127.0.0.1", 0, tls=TlsFiles(ca_dir / "body.pem", ca_dir / "body.key"))
    svc.open_round(
        1, {"node-a": "classification", "node-b": "segmentation"}, train_body=False, mode="async"
    )
    try:
        yield svc, f"127.0.0.1:{port}"
    finally:
        svc.stop()


def _token(node: str, task: str, **kw: float) -> str:
    return issue_token(SECRET, RUN, 1, node, task, ttl_s=kw.pop("ttl_s", 60.0), **kw)


def _link(target: str, token: str, ca: Path | None) -> RemoteBodyLink:
    root = ca.read_bytes() if ca is not None else None
    return RemoteBodyLink(target, token, tls_root_cert=root, timeout_s=20)


def test_a_site_pinning_the_ca_gets_through_and_computes(service, ca_dir):
    _, target = service
    with _link(target, _token("node-a", "classification"), ca_dir / "ca.pem") as link:
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
        _link(target, token(), ca_dir / "ca.pem").open()
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED and why in str(exc.value)


def test_a_copied_token_is_refused_while_its_node_is_connected(service, ca_dir):
    _, target = service
    token = _token("node-b", "segmentation")
    with _link(target, token, ca_dir / "ca.pem"):
        with pytest.raises(BodyServiceError) as exc:
            _link(target, token, ca_dir / "ca.pem").open()
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("client_ca", [None, "other-ca/ca.pem"], ids=["plaintext", "other-ca"])
def test_plaintext_or_an_untrusted_ca_cannot_reach_the_tls_port(service, ca_dir, client_ca):
    _, target = service
    link = _link(
        target, _token("node-a", "classification"), ca_dir / client_ca if client_ca else None
    )
    with pytest.raises(BodyServiceError) as exc:
        link.open()
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE
