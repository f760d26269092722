"""How benchmarks report: a rich table on screen and a Markdown section in BENCHMARKS.md."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from festa.shared.runinfo import environment_info

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine_line() -> str:
    """One line naming the machine, load and library versions a number was measured with."""
    env = environment_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = env["cuda"] or "no GPU"
    return (
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {device}; 1-min load at start {load:.1f}; "
        f"torch {env['versions']['torch']}, flwr {env['versions']['flwr']}, Python {env['python']}; "
        f"festa commit {(env['git_commit'] or 'unknown')[:10]}."
    )


def publish(
    title: str,
    command: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    notes: str = "",
    machine: str | None = None,
    console: Console | None = None,
    write: bool = True,
) -> None:
    """Print `rows` as a table and (if `write`) append a dated section to BENCHMARKS.md."""
    console = console or Console()
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*map(_fmt, row))
    console.print(table)
    if not write:
        return
    lines = [
        f"## {title} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        machine or machine_line(),
        f"Command: `{command}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    with BENCHMARKS.open("a") as f:
        f.write("\n" + "\n".join(lines))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
