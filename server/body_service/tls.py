"""The body service's TLS identity and, for mutual TLS, the CA its clients' certificates need."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the service's TLS identity (certificate chain from the run's CA, key).

    With `client_ca` set the port is mutual TLS: a client must present a certificate signed by
    that CA (`festa certs node SITE` issues one per site), or the handshake fails.
    """

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        key = Path(self.private_key).read_bytes()
        cert = Path(self.cert_chain).read_bytes()
        if self.client_ca is None:
            return grpc.ssl_server_credentials([(key, cert)])
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=Path(self.client_ca).read_bytes(),
            require_client_auth=True,
        )
