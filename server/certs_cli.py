"""`festa certs`: the deployment's private CA, TLS certificates and SuperNode auth keys.

festa certs init   --dir certs [--force]
festa certs server --dir certs [--name superlink] [--san festa.example.org ...] [--force]
festa certs node   SITE --dir certs [--force]   (SuperNode key + body-service client cert)
festa certs show   certs/superlink.pem
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from festa.server import certs
from festa.shared.deploy_cli import err

app = typer.Typer(help="Private CA, TLS certificates and SuperNode keys for a festa deployment.")
out = Console(soft_wrap=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="Certificate folder.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace existing files (invalidates what they signed).")
]


def _run(fn, *args, **kwargs) -> certs.Issued:  # noqa: ANN001
    try:
        return fn(*args, **kwargs)
    except certs.CertError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command()
def init(
    directory: DirOpt = Path("certs"),
    days: Annotated[int, typer.Option(help="CA validity in days.")] = 3650,
    force: ForceOpt = False,
) -> None:
    """Create the CA (ca.pem, ca.key). Keep ca.key offline once the certificates are issued."""
    issued = _run(certs.init_ca, directory, days=days, force=force)
    out.print(f"CA certificate {issued.cert}, key {issued.key} (0600)")


@app.command()
def server(
    directory: DirOpt = Path("certs"),
    name: Annotated[
        list[str] | None, typer.Option("--name", help="superlink and/or body (repeat).")
    ] = None,
    san: Annotated[
        list[str] | None, typer.Option("--san", help="Extra host name or IP clients dial (repeat).")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
    force: ForceOpt = False,
) -> None:
    """Issue the SuperLink and body-service certificates (SANs: localhost, 127.0.0.1, --san ...)."""
    for n in name or ["superlink", "body"]:
        issued = _run(certs.issue_server_cert, directory, n, san or [], days=days, force=force)
        out.print(f"{n}: certificate {issued.cert}, key {issued.key} (0600)")


@app.command()
def node(
    site: Annotated[str, typer.Argument(help="Site id, e.g. site-a.")],
    directory: DirOpt = Path("certs"),
    force: ForceOpt = False,
) -> None:
    """Create a site's SuperNode auth key pair (register the .pub with `festa server
    register-node`) and its client certificate for the body service (mutual TLS)."""
    issued = _run(certs.node_key, directory, site, force=force)
    out.print(
        f"{site}: private key {issued.key} (0600, stays at the site), public key {issued.cert}"
    )
    client = _run(certs.issue_client_cert, directory, site, force=force)
    out.print(f"{site}: body-service client certificate {client.cert}, key {client.key} (0600)")


@app.command()
def show(path: Annotated[Path, typer.Argument(help="A PEM certificate.")]) -> None:
    """Print a certificate's subject, issuer, SANs and expiry as JSON."""
    out.print_json(json.dumps(certs.describe(path)))


if __name__ == "__main__":
    app()
