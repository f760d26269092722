"""`festa server`: run the server side of a deployment.

festa server start --config server.toml [--insecure] [--exit-after-run]
festa server register-node certs/nodes/site-a.pub --config server.toml
festa server check --config server.toml
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer

from festa.server import deploy
from festa.shared.deploy_cli import InsecureOpt, err, settings_or_exit
from festa.shared.supervise import Child, Supervisor

app = typer.Typer(help="Server side of a deployment: SuperLink, console, node registration.")

ConfigOpt = Annotated[Path, typer.Option("--config", help="server.toml (see deploy/server.toml).")]


def _settings(config: Path, insecure: bool = False) -> deploy.ServerSettings:
    return settings_or_exit(config, deploy.ServerSettings, "server", insecure)


def wait_for_port(address: str, timeout_s: float = 60.0) -> None:
    """Block until `host:port` accepts TCP connections."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {address} after {timeout_s:.0f} s"
                ) from None
            time.sleep(0.2)


@app.command()
def check(config: ConfigOpt, insecure: InsecureOpt = False) -> None:
    """Validate server.toml and print the commands `start` would run."""
    s = _settings(config, insecure)
    typer.echo(" ".join(deploy.superlink_argv(s)))
    typer.echo(" ".join(deploy.submit_argv(s)))


@app.command()
def start(
    config: ConfigOpt,
    insecure: InsecureOpt = False,
    exit_after_run: Annotated[
        bool, typer.Option("--exit-after-run", help="Stop everything once the submitted run ends.")
    ] = False,
) -> None:
    """Start the SuperLink (supervised), the console, and submit the run when run.submit is true."""
    s = _settings(config, insecure)
    deploy.prepare(s)
    env = deploy.flwr_env(s)
    children = [Child("superlink", deploy.superlink_argv(s), s.logs / "superlink.log", env=env)]
    supervisor = Supervisor(children, on_event=lambda m: err.print(f"festa server: {m}"))
    console = None
    try:
        supervisor.start()
        wait_for_port(s.control_address)
        err.print(
            f"festa server: SuperLink on {s.server.host}:{s.server.port}; run config {s.run_config_path}"
        )
        if s.console.enabled:
            from festa.server.console.app import ConsoleServer
            from festa.server.store import RunStore

            console = ConsoleServer(
                RunStore(s.store_path),
                s.console.host,
                s.console.port,
                s.console.token or None,
            ).start()
            err.print(f"festa server: console on {console.url}")
        if s.run.submit:
            submit = Child(
                "submit", deploy.submit_argv(s), s.logs / "submit.log", env=env, restart=False
            )
            supervisor.add(submit)
        until = (lambda: supervisor.done("submit")) if (s.run.submit and exit_after_run) else None
        supervisor.run(until=until)
    finally:
        supervisor.stop()
        if console is not None:
            console.stop()
    if s.run.submit and exit_after_run:
        codes = supervisor.child("submit").exit_codes
        raise typer.Exit(codes[-1] if codes else 1)


@app.command("register-node")
def register_node(
    public_key: Annotated[
        Path, typer.Argument(help="The site's public key (festa certs node SITE).")
    ],
    config: ConfigOpt,
) -> None:
    """Allow a site's SuperNode to connect (wraps `flwr supernode register`)."""
    s = _settings(config)
    if s.server.insecure:
        err.print("[red]node authentication is off with insecure = true; nothing to register[/red]")
        raise typer.Exit(2)
    if not public_key.is_file():
        err.print(f"[red]no public key at {public_key}[/red]")
        raise typer.Exit(2)
    deploy.prepare(s)
    proc = subprocess.run(
        deploy.register_argv(s, public_key),
        env={**os.environ, **deploy.flwr_env(s)},
        capture_output=True,
        text=True,
    )
    typer.echo(proc.stdout.strip())
    if proc.returncode != 0 and "already in use" in (proc.stdout + proc.stderr).lower():
        typer.echo(f"{public_key} is already registered")  # re-running is harmless
        return
    if proc.returncode != 0:
        err.print(f"[red]registration failed:[/red] {proc.stderr.strip() or proc.stdout.strip()}")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
