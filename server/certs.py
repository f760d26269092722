"""A private certificate authority for one festa deployment, and the SuperNode auth keys.

Layout of a certificate folder (all PEM unless noted; private keys are written 0600)::

    ca.pem, ca.key                 the deployment's CA (root of trust for every TLS port)
    superlink.pem, superlink.key   the Flower SuperLink's TLS identity (signed by the CA)
    body.pem, body.key             the body service's TLS identity (signed by the CA)
    nodes/<site>.key, <site>.pub   one ECDSA P-384 pair per site in OpenSSH format, as
                                   `flower-supernode --auth-supernode-private-key` and
                                   `flwr supernode register` read them
    clients/<site>.pem, .key       the site's client certificate for the body service's
                                   mutual-TLS port (signed by the CA)

Nothing is ever overwritten unless `force=True`: a second `init` would orphan every
certificate and registered key issued from the first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("localhost", "127.0.0.1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class CertError(Exception):
    """A certificate operation that cannot proceed (file exists, missing CA, bad name)."""


@dataclass(frozen=True)
class Issued:
    """Paths written by one operation."""

    cert: Path
    key: Path


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise CertError(f"{kind} {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CertError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace)")


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write `data` atomically; private files are created 0600 and never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(
    directory: str | Path, *, common_name: str = "festa CA", days: int = 3650, force: bool = False
) -> Issued:
    """Create the deployment's CA (`ca.pem`, `ca.key`) in `directory`."""
    d = Path(directory)
    cert_path, key_path = d / "ca.pem", d / "ca.key"
    _refuse_existing([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Issued(cert_path, key_path)


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = d / "ca.pem", d / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise CertError(f"no CA in {d}: run `festa certs init --dir {d}` first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC private key")
    return cert, key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue_leaf(
    d: Path,
    stem: str,
    common_name: str,
    sans: list[str],
    usage: x509.ObjectIdentifier,
    days: int,
    force: bool,
) -> Issued:
    """Write `<stem>.pem` / `<stem>.key` (under `d`): a P-256 leaf signed by the CA in `d`."""
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    _refuse_existing([cert_path, key_path], force)
    ca_cert, ca_key = _load_ca(d)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Issued(cert_path, key_path)


def issue_server_cert(
    directory: str | Path,
    name: str,
    sans: list[str] | tuple[str, ...] = (),
    *,
    days: int = 825,
    force: bool = False,
) -> Issued:
    """Issue `<name>.pem` / `<name>.key` signed by the CA in `directory`, valid for
    localhost, 127.0.0.1 and every host name or IP address in `sans`."""
    _check_name("certificate name", name)
    names = list(dict.fromkeys([*DEFAULT_SANS, *sans]))
    common_name = names[-1] if sans else name
    usage = ExtendedKeyUsageOID.SERVER_AUTH
    return _issue_leaf(Path(directory), name, common_name, names, usage, days, force)


def issue_client_cert(
    directory: str | Path, site: str, *, days: int = 825, force: bool = False
) -> Issued:
    """Issue `clients/<site>.pem` / `clients/<site>.key`: the site's client certificate for
    the body service's mutual-TLS port, signed by the CA in `directory`."""
    _check_name("site id", site)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH
    return _issue_leaf(Path(directory), f"clients/{site}", site, [site], usage, days, force)


def node_key(directory: str | Path, site: str, *, force: bool = False) -> Issued:
    """Create `nodes/<site>.key` (private) and `nodes/<site>.pub` (register this one on the
    server): an ECDSA P-384 pair in OpenSSH format. `Issued.cert` is the public key."""
    _check_name("site id", site)
    d = Path(directory) / "nodes"
    key_path, pub_path = d / f"{site}.key", d / f"{site}.pub"
    _refuse_existing([key_path, pub_path], force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(key_path, private, private=True)
    _write(pub_path, public + f" festa-{site}\n".encode(), private=False)
    return Issued(pub_path, key_path)


def describe(path: str | Path) -> dict[str, object]:
    """Subject, SANs and validity of a PEM certificate (for `festa certs show`)."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": names,
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
