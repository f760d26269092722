"""The command-line pieces both deployment commands (`festa server`, `festa client`) share: the
stderr console, the `--insecure` option and loading a settings file or exiting with its error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from festa.shared.config import ConfigError
from festa.shared.deploy import INSECURE_WARNING, DeployModel, load_settings

M = TypeVar("M", bound=DeployModel)

err = Console(stderr=True, soft_wrap=True)

InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="No TLS, no node auth: loopback only.")
]


def settings_or_exit(path: Path, cls: type[M], insecure_section: str, insecure: bool) -> M:
    """`load_settings` for a CLI: a bad file is one red line and exit code 2; insecure mode is
    announced loudly."""
    try:
        s = load_settings(path, cls, insecure_section=insecure_section, insecure=insecure)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if getattr(s, insecure_section).insecure:
        err.print(f"[bold red]{INSECURE_WARNING}[/bold red]")
    return s
