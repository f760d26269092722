"""`festa client`: run one hospital site of a deployment.

festa client start --site site-a.toml [--insecure]
festa client check --site site-a.toml
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from festa.client import deploy
from festa.shared.deploy_cli import InsecureOpt, err, settings_or_exit
from festa.shared.supervise import Child, Supervisor

app = typer.Typer(help="Site side of a deployment: the SuperNode and the restoration daemon.")

SiteOpt = Annotated[Path, typer.Option("--site", help="site TOML (see deploy/site-a.toml).")]


def _settings(site: Path, insecure: bool = False) -> deploy.SiteSettings:
    return settings_or_exit(site, deploy.SiteSettings, "superlink", insecure)


def children(s: deploy.SiteSettings) -> list[Child]:
    """The supervised processes of a site: its SuperNode and, if enabled, its restoration daemon."""
    out = [
        Child(
            "supernode",
            deploy.supernode_argv(s),
            s.logs / "supernode.log",
            env={"FLWR_HOME": str(s.flwr_home.resolve())},
        )
    ]
    restore = deploy.restoration_argv(s)
    if restore is not None:
        out.append(Child("restoration", restore, s.logs / "restoration.log"))
    return out


@app.command()
def check(site: SiteOpt, insecure: InsecureOpt = False) -> None:
    """Validate the site TOML and print the commands `start` would run."""
    s = _settings(site, insecure)
    for child in children(s):
        typer.echo(f"{child.name}: {' '.join(child.argv)}")


@app.command()
def start(
    site: SiteOpt,
    insecure: InsecureOpt = False,
) -> None:
    """Start the site's SuperNode (and restoration daemon), restart them if they crash, stop on SIGTERM."""
    s = _settings(site, insecure)
    for d in (s.flwr_home, s.logs):
        d.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(
        children(s), on_event=lambda m: err.print(f"festa client {s.site.id}: {m}")
    )
    supervisor.start()
    supervisor.run()


if __name__ == "__main__":
    app()
