"""Export one run to a self-contained HTML report: tables plus inline SVG plots (matplotlib Agg)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from festa.server.console.formatting import duration, human_bytes, utc  # noqa: E402
from festa.server.store import RunStore  # noqa: E402

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1d2733;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #dde3ea}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e9ef;text-align:left;white-space:nowrap}
th{font-size:12px;color:#67768a;text-transform:uppercase} .muted{color:#67768a}
figure{margin:8px 0} svg{max-width:100%;height:auto}
"""


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return escape(str(v))


def _human_bytes(row: dict[str, Any]) -> dict[str, str]:
    return {k: human_bytes(row[k]) for k in ("bytes_in", "bytes_out")}


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], test_id: str) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{escape(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(key))}</td>" for key, _ in columns) + "</tr>"
        for r in rows
    )
    return f'<table id="{test_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _metric_plots(task_metrics: list[dict[str, Any]], tasks: list[str]) -> str:
    if not tasks or not task_metrics:
        return '<p class="muted">no task metrics recorded</p>'
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in task_metrics if r["task"] == task]
        for name in sorted({n for r in rows for n in r["metrics"]}):
            points = [(r["round"], r["metrics"].get(name)) for r in rows]
            points = [(x, y) for x, y in points if y is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(task)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _svg(fig)


def _traffic_plot(rounds: list[dict[str, Any]]) -> str:
    if not rounds:
        return '<p class="muted">no rounds recorded</p>'
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [r["bytes_in"] / 1e6 for r in rounds], width, label="in")
    ax.bar([x + width / 2 for x in xs], [r["bytes_out"] / 1e6 for r in rounds], width, label="out")
    ax.set_xlabel("round")
    ax.set_ylabel("MB")
    ax.set_xticks(xs)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def render_report(store: RunStore, run_id: int) -> str:
    """The HTML text of the report of `run_id` (raises UnknownRunError for a missing run)."""
    snap = store.snapshot(run_id)
    run = snap["run"]
    tasks = [t["task"] for t in snap["tasks"]]
    note = "" if run["state"] != "running" else " (still running when exported)"
    overview = [
        ("State", f"{run['state']}{note}"),
        ("Rounds finished", f"{run['rounds_finished']} of {run['num_rounds'] or '?'}"),
        ("Started", utc(run["started_at"])),
        ("Ended", utc(run["ended_at"])),
        ("Duration", duration(run["elapsed_seconds"])),
        ("Tasks", ", ".join(tasks) or "–"),
        ("Clients", str(run["clients_total"])),
    ]
    clients = [
        c
        | _human_bytes(c)
        | {"contribution": f"{100 * c['contribution']:.1f}%", "last_seen": utc(c["last_seen"])}
        for c in snap["clients"]
    ]
    rounds = [r | _human_bytes(r) for r in snap["rounds"]]
    events = [e | {"at": utc(e["at"])} for e in store.events(run_id, limit=100_000)]
    checkpoints = [c | {"at": utc(c["at"])} for c in snap["checkpoints"]]
    parts = [
        f"<h1>festa run #{run['id']}: {escape(run['name'])}</h1>",
        f'<p class="muted">exported {utc(datetime.now(UTC).timestamp())}</p>',
        "<h2>Overview</h2><table id='overview'>"
        + "".join(f"<tr><th>{k}</th><td>{escape(v)}</td></tr>" for k, v in overview)
        + "</table>",
        "<h2>Per-task metrics</h2><figure>"
        + _metric_plots(snap["task_metrics"], tasks)
        + "</figure>",
        _table(
            [{"task": r["task"], "round": r["round"]} | r["metrics"] for r in snap["task_metrics"]],
            [("task", "task"), ("round", "round")]
            + [(n, n) for n in sorted({n for r in snap["task_metrics"] for n in r["metrics"]})],
            "task-metrics",
        ),
        "<h2>Rounds</h2>",
        _table(
            rounds,
            [
                ("round", "round"),
                ("phase", "phase"),
                ("seconds", "seconds"),
                ("clients", "clients"),
                ("dropped", "dropped"),
                ("failed", "failed"),
                ("num_examples", "examples"),
                ("bytes_in", "bytes in"),
                ("bytes_out", "bytes out"),
                ("tokens_per_s", "body tok/s"),
            ],
            "rounds",
        ),
        "<h2>Traffic per round</h2><figure>" + _traffic_plot(snap["rounds"]) + "</figure>",
        "<h2>Clients</h2>",
        _table(
            clients,
            [
                ("site_id", "site"),
                ("task", "task"),
                ("rounds", "rounds"),
                ("contribution", "contribution"),
                ("examples_total", "examples"),
                ("bytes_in", "bytes in"),
                ("bytes_out", "bytes out"),
                ("dropped_rounds", "dropped"),
                ("failed_rounds", "failed"),
                ("last_seen", "last seen"),
            ],
            "clients",
        ),
        "<h2>Restoration per site (latest report)</h2>",
        _table(
            snap["restoration"],
            [
                ("site_id", "site"),
                ("round", "round"),
                ("restored", "restored"),
                ("pending", "pending"),
                ("quarantined", "quarantined"),
            ],
            "restoration",
        ),
        "<h2>Checkpoints</h2>",
        _table(
            checkpoints, [("round", "round"), ("path", "path"), ("at", "written")], "checkpoints"
        ),
        "<h2>Event log</h2>",
        _table(
            events,
            [("at", "time"), ("kind", "kind"), ("site_id", "site"), ("message", "message")],
            "events",
        ),
    ]
    title = escape(f"festa run #{run['id']} {run['name']}")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def export_report(store: RunStore, run_id: int, out: str | Path) -> Path:
    """Write the report of `run_id` to `out` (folders created); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(store, run_id), encoding="utf-8")
    return out
