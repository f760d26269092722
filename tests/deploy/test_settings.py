"""Deployment TOML files are validated at start: errors name the bad key, --insecure is refused
off loopback and announced loudly on it, and the commands carry TLS and node-auth flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from festa.client.cli import app as client_app
from festa.server.cli import app as server_app
from tests.deploy.conftest import make_certs, write_toml

runner = CliRunner()


@pytest.fixture(scope="module")
def cdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _server(tmp: Path, cdir: Path, **sections: dict) -> Path:
    base = {
        "server": {"host": "127.0.0.1", "port": 19092, "state-dir": tmp / "state", "certs": cdir}
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_toml(tmp / "server.toml", base)


def _site(tmp: Path, cdir: Path, **sections: dict) -> Path:
    base = {
        "site": {
            "id": "site-a",
            "task": "classification",
            "data": "phantoms",
            "state-dir": tmp / "site",
        },
        "superlink": {"address": "127.0.0.1:19092", "ca": cdir / "ca.pem"},
        "auth": {"private-key": cdir / "nodes" / "site-a.key"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_toml(tmp / "site.toml", base)


def test_valid_files_give_tls_and_node_auth_commands(tmp_path, cdir):
    out = runner.invoke(server_app, ["check", "--config", str(_server(tmp_path, cdir))])
    assert out.exit_code == 0, out.output
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    ):
        assert flag in out.output
    assert "--insecure" not in out.output
    out = runner.invoke(client_app, ["check", "--site", str(_site(tmp_path, cdir))])
    assert out.exit_code == 0, out.output
    assert "--root-certificates" in out.output and "--auth-supernode-private-key" in out.output
    assert 'site-id="site-a"' in out.output and "body-ca=" in out.output
    # the body port is mutual TLS: the site presents the certificate `festa certs node` issued
    assert f"body-cert=\"{(cdir / 'clients' / 'site-a.pem').resolve()}\"" in out.output


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"server": {"prot": 1}}, "server.prot"),
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"certs": "/nonexistent"}}, "server.certs.ca.pem"),
        ({"server": {"insecure": True, "host": "0.0.0.0"}}, "server.insecure"),
        ({"console": {"host": "0.0.0.0"}}, "console.admin-token"),
        ({"run": {"submit": True, "app": "/nonexistent"}}, "run.app"),
    ],
)
def test_bad_server_files_name_the_key(tmp_path, cdir, sections, key):
    out = runner.invoke(server_app, ["check", "--config", str(_server(tmp_path, cdir, **sections))])
    assert out.exit_code == 2 and key in out.output, out.output


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"site": {"task": "staging"}}, "site.task"),
        ({"site": {"id": "a b"}}, "site.id"),
        ({"site": {"data": "/nonexistent"}}, "site.data"),
        ({"auth": {"private-key": "/nonexistent"}}, "auth.private-key"),
        ({"auth": {"body-cert": "/nonexistent"}}, "auth.body-cert"),
        ({"superlink": {"insecure": True, "address": "10.1.2.3:9092"}}, "superlink.insecure"),
        ({"restoration": {"enabled": True}}, "restoration.config"),
        ({"supernode": {"colour": "red"}}, "supernode.colour"),
    ],
)
def test_bad_site_files_name_the_key(tmp_path, cdir, sections, key):
    out = runner.invoke(client_app, ["check", "--site", str(_site(tmp_path, cdir, **sections))])
    assert out.exit_code == 2 and key in out.output, out.output


def test_insecure_on_loopback_is_allowed_but_loud(tmp_path, cdir):
    out = runner.invoke(client_app, ["check", "--site", str(_site(tmp_path, cdir)), "--insecure"])
    assert out.exit_code == 0 and "INSECURE" in out.output and "--insecure" in out.output
    assert "--root-certificates" not in out.output
