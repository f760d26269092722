"""The web console: one self-contained page plus a JSON API over a RunStore.

Read-only by default. Actions that change a run (stop it, exclude a site from the next round)
need the admin token in the `X-Festa-Admin-Token` header (or `Authorization: Bearer ...`);
without a configured token they are refused with 403, with a missing token 401, a wrong one 403.
Every other bad request gets a 4xx and a reason, never a 500: an unknown run 404, ids and query
values out of range 422, an action on a run that has ended 409, excluding a site the run does
not have 404.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from importlib import resources
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from festa.server.store import (
    SCHEMA_VERSION,
    InvalidValueError,
    RunEndedError,
    RunStore,
    StoreError,
    UnknownRunError,
)

ADMIN_HEADER = "X-Festa-Admin-Token"
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id is refused, not an overflow (500)
MAX_EVENTS = 5000

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="a run id from /api/runs")]
RoundNumber = Annotated[int | None, Query(ge=1, le=MAX_ID, description="one round only")]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID, description="events after this event id")]
Limit = Annotated[int, Query(ge=1, le=MAX_EVENTS, description="at most this many events")]


class ExcludeRequest(BaseModel):
    """Body of POST /api/runs/{id}/exclude."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1, max_length=120)


class ConsoleBindError(RuntimeError):
    """Refused to listen beyond localhost without an admin token."""


def page_html() -> str:
    """The console page (HTML, CSS and JS inline; nothing fetched from elsewhere)."""
    return resources.files("festa.server.console").joinpath("page.html").read_text(encoding="utf-8")


LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]", "::1"]


def create_app(
    store: RunStore, admin_token: str | None = None, allowed_hosts: list[str] | None = None
) -> FastAPI:
    """FastAPI app serving the console page at / and the JSON API under /api (docs at /docs).

    `allowed_hosts` limits the Host header (e.g. LOOPBACK_HOSTS, so a web page elsewhere
    cannot read the console through DNS rebinding); None accepts any host."""
    app = FastAPI(
        title="festa console",
        description="Run store of federated festa runs: runs, rounds, clients, metrics, events.",
        version=str(SCHEMA_VERSION),
    )
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    page = page_html()

    @app.exception_handler(UnknownRunError)
    def _unknown_run(_req: Request, exc: UnknownRunError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(InvalidValueError)
    def _invalid(_req: Request, exc: InvalidValueError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RunEndedError)
    def _ended(_req: Request, exc: RunEndedError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(StoreError)
    def _store_error(_req: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def require_admin(
        x_festa_admin_token: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> None:
        if admin_token is None:
            raise HTTPException(403, "admin actions are disabled: the console has no admin token")
        given = x_festa_admin_token
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given:
            raise HTTPException(
                401,
                f"admin token required in the {ADMIN_HEADER} header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(403, "wrong admin token")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        """Console facts: whether admin actions are enabled, schema version, store location."""
        return {
            "admin_enabled": admin_token is not None,
            "schema_version": store.schema_version,
            "latest_run_id": store.latest_run_id(),
            "server_time": time.time(),
        }

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        """Every run's summary, oldest first."""
        return store.runs()

    @app.get("/api/runs/{run_id}")
    def run(run_id: RunId) -> dict[str, Any]:
        """One run: state, current round and phase, ETA, clients online, ..."""
        return store.run(run_id)

    @app.get("/api/runs/{run_id}/snapshot")
    def snapshot(run_id: RunId) -> dict[str, Any]:
        """Everything the console page shows for a run, in one response."""
        return store.snapshot(run_id) | {"server_time": time.time()}

    @app.get("/api/runs/{run_id}/rounds")
    def rounds(run_id: RunId) -> list[dict[str, Any]]:
        """Per round: phase, duration, clients, drops, examples, traffic, body throughput."""
        return store.rounds(run_id)

    @app.get("/api/runs/{run_id}/tasks")
    def tasks(run_id: RunId) -> list[dict[str, Any]]:
        return store.tasks(run_id)

    @app.get("/api/runs/{run_id}/task_metrics")
    def task_metrics(run_id: RunId) -> list[dict[str, Any]]:
        """Aggregated metrics per task per round."""
        return store.task_metrics(run_id)

    @app.get("/api/runs/{run_id}/clients")
    def clients(run_id: RunId) -> list[dict[str, Any]]:
        """Per site: online, last seen, contribution, traffic, drops."""
        return store.clients(run_id)

    @app.get("/api/runs/{run_id}/client_rounds")
    def client_rounds(run_id: RunId, round: RoundNumber = None) -> list[dict[str, Any]]:
        """Per client per round: examples, traffic, metrics, drop reason."""
        return store.client_rounds(run_id, round)

    @app.get("/api/runs/{run_id}/restoration")
    def restoration(run_id: RunId, latest: bool = True) -> list[dict[str, Any]]:
        """Restoration counts per site (latest report each, or every report)."""
        return store.restoration_status(run_id) if latest else store.restoration(run_id)

    @app.get("/api/runs/{run_id}/body_throughput")
    def body_throughput(run_id: RunId) -> list[dict[str, Any]]:
        return store.body_throughput(run_id)

    @app.get("/api/runs/{run_id}/events")
    def events(run_id: RunId, after_id: AfterId = 0, limit: Limit = 500) -> list[dict[str, Any]]:
        """Event log entries after `after_id`, oldest first (at most `limit`, up to 5000)."""
        return store.events(run_id, after_id=after_id, limit=limit)

    @app.get("/api/runs/{run_id}/checkpoints")
    def checkpoints(run_id: RunId) -> list[dict[str, Any]]:
        return store.checkpoints(run_id)

    @app.get("/api/runs/{run_id}/actions", dependencies=[Depends(require_admin)])
    def actions(run_id: RunId) -> list[dict[str, Any]]:
        """Admin actions not yet carried out by the server (admin token needed)."""
        return store.pending_actions(run_id)

    @app.post("/api/runs/{run_id}/stop", dependencies=[Depends(require_admin)])
    def stop(run_id: RunId) -> dict[str, Any]:
        """Ask the server to stop the run after the current round (admin token needed)."""
        return {"action_id": store.request_stop(run_id), "kind": "stop"}

    @app.post("/api/runs/{run_id}/exclude", dependencies=[Depends(require_admin)])
    def exclude(run_id: RunId, body: ExcludeRequest) -> dict[str, Any]:
        """Leave a site of the run out of the next round (admin token needed)."""
        sites = [c["site_id"] for c in store.clients(run_id)]
        if body.site_id not in sites:
            raise HTTPException(
                404, f"run {run_id} has no site {body.site_id!r}; its sites: {sites or 'none yet'}"
            )
        action_id = store.exclude_site(run_id, body.site_id)
        return {"action_id": action_id, "kind": "exclude_site", "site_id": body.site_id}

    return app


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, admin_token: str | None) -> str | None:
    """Refuse (ConsoleBindError) to listen beyond localhost without an admin token; with one,
    return a warning that the read-only views are open to anyone who can reach the port."""
    if is_loopback(host):
        return None
    if not admin_token:
        raise ConsoleBindError(
            f"refusing to serve the console on {host}: beyond localhost it needs an admin token "
            "(--admin-token or FESTA_CONSOLE_ADMIN_TOKEN)"
        )
    return (
        f"WARNING: console listening on {host}: run metrics, site ids and the event log are "
        "readable by anyone who can reach this port; only actions need the admin token. "
        "Put it behind the hospital's TLS proxy."
    )


def hosts_for(host: str) -> list[str] | None:
    """Host headers to accept when listening on `host`: loopback names for a loopback bind,
    anything otherwise (the public name is not known here)."""
    return LOOPBACK_HOSTS if is_loopback(host) else None


class ConsoleServer:
    """The console served by uvicorn in a background thread (for `festa server start` and
    tests). `url` is valid after start(); port 0 picks a free port."""

    def __init__(
        self,
        store: RunStore,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_token: str | None = None,
    ) -> None:
        self.warning = check_bind(host, admin_token)
        config = uvicorn.Config(
            create_app(store, admin_token, hosts_for(host)),
            host=host,
            port=port,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="festa-console", daemon=True)
        self.url = ""

    def start(self, timeout: float = 20.0) -> ConsoleServer:
        """Start serving; returns once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
