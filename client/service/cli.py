"""`festa restore serve --site SITE.toml`: run one site's restoration daemon.

`client/restoration/cli.py` calls `register(app)` to add `serve` to the `restore` group; this
module's own `app` (with `python -m festa.client.service.cli serve --site ...`) serves tests and ops.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from festa.client.service.config import SiteConfig, load_site_config
from festa.shared.config import ConfigError
from festa.shared.runtime import configure_process

if TYPE_CHECKING:
    from festa.client.service.daemon import SiteService

err = Console(stderr=True)


def _setup_logging(log_file: Path) -> None:
    logger = logging.getLogger("festa.site")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.FileHandler(log_file), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)


def _uvicorn_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling: `serve` stops worker and server together."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            yield

    return Server


def serve(
    site: Annotated[Path, typer.Option("--site", help="the site's TOML configuration")],
) -> None:
    """Watch the incoming folder, serve the local HTTP API and (with `[dicom]`) receive DICOM
    C-STORE until stopped (Ctrl-C, SIGTERM)."""
    try:
        config = load_site_config(site)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    config.folders.state.mkdir(parents=True, exist_ok=True)
    _setup_logging(config.folders.state / "service.log")
    # heavy imports after the config is known good
    from festa.client.service.daemon import SiteService

    try:
        service = SiteService(config)
        service.warm_up()
    except (ConfigError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] cannot start site {config.site_id}: {exc}")
        raise typer.Exit(2) from exc
    receiver = None
    if config.dicom.enabled:
        from festa.client.service.dicom_scp import DicomReceiver

        try:
            receiver = DicomReceiver(service, config.dicom).start()
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot start the DICOM receiver: {exc}")
            raise typer.Exit(2) from exc
    try:
        _serve(config, service)
    finally:
        if receiver is not None:
            receiver.stop()


def _serve(config: SiteConfig, service: SiteService) -> None:
    """Run the worker (and the HTTP API when enabled) until SIGTERM/SIGINT."""
    stop = threading.Event()
    if not config.http.enabled:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        service.run(stop)
        return
    import uvicorn

    from festa.client.service.http_api import create_app

    server = _uvicorn_server_class()(
        uvicorn.Config(
            create_app(service),
            host=config.http.host,
            port=config.http.port,
            log_level="warning",
            access_log=False,  # request URLs may carry file names; keep them out of logs
        )
    )

    def shutdown(*_: object) -> None:
        stop.set()
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, shutdown)
    worker = threading.Thread(target=service.run, args=(stop,), name="restore-worker", daemon=True)
    worker.start()
    try:
        server.run()
    finally:
        stop.set()
        worker.join(timeout=600)
    if server.started is False:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `serve` command to a typer app (the `festa restore` group)."""
    app.command("serve")(serve)


app = typer.Typer(help="festa site restoration daemon", no_args_is_help=True)
register(app)


@app.callback()
def _main() -> None:
    """festa site restoration daemon."""


if __name__ == "__main__":
    configure_process()
    app()
