"""`festa certs`: a CA, server certificates with the right SANs, SuperNode keys flwr accepts,
private keys 0600, nothing overwritten without --force."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve
from typer.testing import CliRunner

from festa.server import certs
from festa.server.certs_cli import app

runner = CliRunner()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_cli_issues_a_ca_server_certs_and_node_keys(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    for args in (
        ["init"],
        ["server", "--san", "festa.example.org", "--san", "10.0.0.5"],
        ["node", "site-a"],
    ):
        result = runner.invoke(app, [*args, "--dir", str(d)])
        assert result.exit_code == 0, result.output
    for key in ("ca.key", "superlink.key", "body.key", "nodes/site-a.key", "clients/site-a.key"):
        assert _mode(d / key) == 0o600, key
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    # The site's client certificate for the body service's mutual-TLS port.
    client = x509.load_pem_x509_certificate((d / "clients" / "site-a.pem").read_bytes())
    client.verify_directly_issued_by(ca)
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for name in ("superlink", "body"):
        cert = x509.load_pem_x509_certificate((d / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "festa.example.org"}
        assert set(sans.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("10.0.0.5"),
        }
    # The public key is what `flwr supernode register` loads; the private key is OpenSSH ECDSA.
    assert try_load_public_key(d / "nodes" / "site-a.pub")
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = load_ssh_private_key((d / "nodes" / "site-a.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and uses_nist_ec_curve(key.public_key())


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    certs.node_key(tmp_path, "site-a")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args in (["init"], ["node", "site-a"]):
        result = runner.invoke(app, [*args, "--dir", str(tmp_path)])
        assert result.exit_code == 1 and "--force" in result.output
    assert {p: p.read_bytes() for p in before} == before
    assert runner.invoke(app, ["node", "site-a", "--dir", str(tmp_path), "--force"]).exit_code == 0
    assert (tmp_path / "nodes" / "site-a.key").read_bytes() != before[
        tmp_path / "nodes" / "site-a.key"
    ]


def test_server_certs_need_a_ca_and_sane_names(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="festa certs init"):
        certs.issue_server_cert(tmp_path, "superlink")
    certs.init_ca(tmp_path)
    with pytest.raises(certs.CertError, match="site id"):
        certs.node_key(tmp_path, "../escape")
