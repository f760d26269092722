"""Flower run config -> festa: pyproject's empty defaults mean "festa's default"; the body
service's TLS files come from `body-cert` / `body-key` (both or neither)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from festa.server.flower_app import body_tls, config_from_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _defaults() -> dict:
    return flatten_dict(tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_defaults_give_the_tiny_preset_and_plaintext_body():
    cfg, extras = config_from_run_config(_defaults())
    assert cfg.model.image_size == 64 and cfg.body_host == "127.0.0.1" and cfg.body_port == 0
    assert body_tls(extras) is None


def test_deployment_overrides_reach_the_config(tmp_path):
    cert, key = tmp_path / "body.pem", tmp_path / "body.key"
    cert.write_text("c")
    key.write_text("k")
    run = {
        **_defaults(),
        "model.image-size": 32,
        "model.embed-dim": 32,
        "body-host": "0.0.0.0",
        "body-port": 9093,
        "body-endpoint": "server:9093",
        "body-cert": str(cert),
        "body-key": str(key),
    }
    cfg, extras = config_from_run_config(run)
    assert (cfg.model.image_size, cfg.model.embed_dim, cfg.model.depth) == (32, 32, 4)
    assert (cfg.body_host, cfg.body_port, cfg.body_endpoint) == ("0.0.0.0", 9093, "server:9093")
    tls = body_tls(extras)
    assert tls is not None and tls.cert_chain == cert and tls.private_key == key


def test_half_or_missing_tls_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="both body-cert and body-key"):
        body_tls({"body-cert": str(tmp_path / "x.pem"), "body-key": ""})
    with pytest.raises(FileNotFoundError, match="body-key"):
        (tmp_path / "x.pem").write_text("c")
        body_tls({"body-cert": str(tmp_path / "x.pem"), "body-key": str(tmp_path / "missing.key")})
