"""`festa console`: serve the web console, view a run in the terminal, export a report.

festa console serve  [--store PATH] [--host 127.0.0.1] [--port 8080] [--admin-token T]
festa console runs|status|rounds|clients|events [--run ID] [--json] [--store PATH]
festa console export --run ID --out report.html
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from festa.server.console.formatting import duration, human_bytes, utc
from festa.server.store import DEFAULT_STORE_PATH, RunStore, StoreError

app = typer.Typer(help="Watch and steer federated runs: web console, terminal views, reports.")
out = Console()
err = Console(stderr=True, soft_wrap=True)

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        help="Run store: a SQLite file or a database URL.",
        envvar="FESTA_STORE",
    ),
]
RunOpt = Annotated[int | None, typer.Option("--run", help="Run id (default: the latest run).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _open(store: str, must_exist: bool = True) -> RunStore:
    if must_exist and "://" not in store and store != ":memory:" and not Path(store).is_file():
        err.print(f"[red]no run store at {store}[/red] (pass --store PATH or start a run first)")
        raise typer.Exit(2)
    try:
        return RunStore(store)
    except StoreError as exc:
        err.print(f"[red]cannot open run store {store}: {exc}[/red]")
        raise typer.Exit(2) from exc


def _run_id(st: RunStore, run: int | None) -> int:
    run_id = st.latest_run_id() if run is None else run
    if run_id is None:
        err.print("[red]the run store has no runs yet[/red]")
        raise typer.Exit(1)
    return run_id


def _view(store: str, run: int | None, read: Callable[[RunStore, int], Any]) -> tuple[int, Any]:
    """Open the store, pick the run, read; store errors become one red line and exit 1."""
    st = _open(store)
    try:
        run_id = _run_id(st, run)
        return run_id, read(st, run_id)
    except StoreError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        st.close()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    cells = [["–" if v is None else str(v) for v in row] for row in rows]
    for i, col in enumerate(columns):
        # Values are never cut or wrapped; long headers wrap instead.
        widest = max([len(r[i]) for r in cells] + [max(map(len, col.split()))])
        justify = "left" if col in _TEXT_COLS else "right"
        table.add_column(col, justify=justify, no_wrap=col in _KEY_COLS, min_width=widest)
    for row in cells:
        table.add_row(*row)
    # On a terminal too narrow for the table, print it wider rather than drop columns.
    need = Measurement.get(out, out.options, table).minimum
    out.print(table, width=max(out.width, need), crop=False)


_KEY_COLS = {"site", "round", "id", "phase", "task", "status"}
_TEXT_COLS = {"site", "task", "phase", "status", "kind", "message", "time (UTC)", "name", "state"}


@app.command()
def serve(
    store: StoreOpt = str(DEFAULT_STORE_PATH),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    admin_token: Annotated[
        str | None,
        typer.Option(
            help="Token that enables actions (stop, exclude); needed to listen beyond localhost.",
            envvar="FESTA_CONSOLE_ADMIN_TOKEN",
        ),
    ] = None,
) -> None:
    """Serve the web console (page at /, JSON API at /api, OpenAPI docs at /docs)."""
    import uvicorn

    from festa.server.console.app import ConsoleBindError, check_bind, create_app, hosts_for

    try:
        warning = check_bind(host, admin_token)
    except ConsoleBindError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if warning:
        err.print(f"[bold yellow]{warning}[/bold yellow]")
    st = _open(store, must_exist=False)
    mode = "actions enabled (admin token set)" if admin_token else "read-only"
    err.print(f"festa console on http://{host}:{port}  store={store}  {mode}")
    app_ = create_app(st, admin_token, hosts_for(host))
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def runs(store: StoreOpt = str(DEFAULT_STORE_PATH), as_json: JsonOpt = False) -> None:
    """Every run in the store."""
    st = _open(store)
    try:
        data = st.runs()
    finally:
        st.close()
    if as_json:
        return _print_json(data)
    _table(
        "runs",
        ["id", "name", "state", "round", "phase", "started (UTC)", "elapsed"],
        [
            [
                r["id"],
                r["name"],
                r["state"],
                r["current_round"],
                r["current_phase"],
                utc(r["started_at"]),
                duration(r["elapsed_seconds"]),
            ]
            for r in data
        ],
    )


def _show(
    store: str,
    run: int | None,
    as_json: bool,
    read: Callable[[RunStore, int], Any],
    render: Callable[[int, Any], None],
) -> None:
    """Read one view of a run; print it as JSON or hand it to `render`."""
    run_id, data = _view(store, run, read)
    if as_json:
        _print_json(data)
    else:
        render(run_id, data)


def _status_table(_run_id: int, data: dict[str, Any]) -> None:
    rounds = "–" if data["current_round"] is None else str(data["current_round"])
    if data["num_rounds"]:
        rounds += f" / {data['num_rounds']}"
    tps = data["tokens_per_s"]
    _table(
        f"run #{data['id']} {data['name']}",
        ["name", "value"],
        [
            ["state", data["state"]],
            ["round", rounds],
            ["phase", data["current_phase"]],
            ["rounds finished", data["rounds_finished"]],
            ["ETA", duration(data["eta_seconds"])],
            ["elapsed", duration(data["elapsed_seconds"])],
            ["started (UTC)", utc(data["started_at"])],
            ["ended (UTC)", utc(data["ended_at"])],
            ["tasks", ", ".join(data["tasks"]) or "–"],
            ["clients online", f"{data['clients_online']} / {data['clients_total']}"],
            ["body tokens/s", "–" if tps is None else f"{tps:,.0f}"],
            ["pending actions", data["pending_actions"]],
        ],
    )


def _rounds_table(run_id: int, data: list[dict[str, Any]]) -> None:
    columns = "round phase secs clients drop fail examples in out tok/s".split()
    rows = [
        [
            r["round"],
            r["phase"],
            "running" if r["ended_at"] is None else f"{r['seconds']:.1f}",
            r["clients"],
            r["dropped"],
            r["failed"],
            r["num_examples"],
            human_bytes(r["bytes_in"], compact=True),
            human_bytes(r["bytes_out"], compact=True),
            None if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}",
        ]
        for r in data
    ]
    _table(f"rounds of run #{run_id}", columns, rows)


def _clients_table(run_id: int, data: list[dict[str, Any]]) -> None:
    columns = ["site", "task", "status", "seen (UTC)", "rounds", "share", "examples"]
    columns += ["in", "out", "drop", "fail"]
    rows = [
        [
            c["site_id"],
            c["task"],
            "online" if c["online"] else "offline",
            utc(c["last_seen"], "%H:%M:%S"),
            c["rounds"],
            f"{100 * c['contribution']:.1f}%",
            c["examples"],
            human_bytes(c["bytes_in"], compact=True),
            human_bytes(c["bytes_out"], compact=True),
            c["dropped_rounds"],
            c["failed_rounds"],
        ]
        for c in data
    ]
    _table(f"clients of run #{run_id}", columns, rows)


def _events_table(run_id: int, data: list[dict[str, Any]]) -> None:
    rows = [[e["id"], utc(e["at"]), e["kind"], e["site_id"], e["message"]] for e in data]
    _table(f"events of run #{run_id}", ["id", "time (UTC)", "kind", "site", "message"], rows)


@app.command()
def status(
    run: RunOpt = None, as_json: JsonOpt = False, store: StoreOpt = str(DEFAULT_STORE_PATH)
) -> None:
    """State of a run: current round and phase, ETA, clients online, body throughput."""
    _show(store, run, as_json, RunStore.run, _status_table)


@app.command()
def rounds(
    run: RunOpt = None, as_json: JsonOpt = False, store: StoreOpt = str(DEFAULT_STORE_PATH)
) -> None:
    """Per round: phase, duration, clients, drops, examples, traffic, body throughput."""
    _show(store, run, as_json, RunStore.rounds, _rounds_table)


@app.command()
def clients(
    run: RunOpt = None, as_json: JsonOpt = False, store: StoreOpt = str(DEFAULT_STORE_PATH)
) -> None:
    """Per site: online, last seen (UTC), share of examples, traffic, drops."""
    _show(store, run, as_json, RunStore.clients, _clients_table)


@app.command()
def events(
    run: RunOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = str(DEFAULT_STORE_PATH),
    limit: Annotated[int, typer.Option(help="Show at most the newest N events.")] = 50,
) -> None:
    """The event log of a run, oldest first."""
    _show(store, run, as_json, lambda st, rid: st.events(rid, limit=limit), _events_table)


def _act(store: str, run: int | None, act: Callable[[RunStore, int], int], what: str) -> None:
    run_id, action_id = _view(store, run, act)
    err.print(f"{what} requested for run #{run_id} (action {action_id}); the server applies it")


@app.command()
def stop(run: RunOpt = None, store: StoreOpt = str(DEFAULT_STORE_PATH)) -> None:
    """Ask the server to stop a run after the current round (writes the store directly).

    Whoever can write the store file is trusted; the web console needs the admin token."""
    _act(store, run, RunStore.request_stop, "stop")


@app.command()
def exclude(
    site_id: Annotated[str, typer.Argument(help="Site to leave out of the next round.")],
    run: RunOpt = None,
    store: StoreOpt = str(DEFAULT_STORE_PATH),
) -> None:
    """Ask the server to leave a site out of the next round (writes the store directly)."""
    _act(store, run, lambda st, rid: st.exclude_site(rid, site_id), f"excluding {site_id}")


@app.command()
def export(
    out_path: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path(
        "report.html"
    ),
    run: RunOpt = None,
    store: StoreOpt = str(DEFAULT_STORE_PATH),
) -> None:
    """Write a self-contained HTML report of a run (tables + inline SVG plots)."""
    from festa.server.console.html_export import export_report

    run_id, path = _view(store, run, lambda st, rid: export_report(st, rid, out_path))
    err.print(f"report of run #{run_id} written to {path}")


if __name__ == "__main__":
    app()
