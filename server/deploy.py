"""The server side of a deployment: settings (`server.toml`) and the commands it runs.

One machine runs the Flower SuperLink (Fleet, Control and Runtime APIs on one TLS port, node
authentication on) and the console; the ServerApp that the SuperLink starts for a run serves
the body service (TLS, same CA) and writes the run store. Layout under `state-dir`::

    superlink.db   Flower's state (runs, registered node keys)
    festa.db       the run store the console reads
    runs/          per-run folders: rounds.jsonl, summary.json, checkpoints/
    logs/          one log per supervised process
    flwr/          FLWR_HOME of the SuperLink and of the local `flwr` CLI (config.toml, apps/)
    run-config.toml  the run config `flwr run` gets (written by `festa server start`)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pydantic import Field, field_validator

from festa.shared.config import DEPLOYMENT_LABEL_PROTECTION, ConfigError
from festa.shared.deploy import (
    DeployModel,
    is_loopback,
    require_files,
    require_loopback,
    write_flwr_config,
)

RunConfigValue = str | int | float | bool

DEPLOYMENT_PRIVACY: dict[str, RunConfigValue] = {
    "label-protection": DEPLOYMENT_LABEL_PROTECTION,
    "secure-aggregation": True,
}
"""Run-config keys every deployed run gets unless `[run.config]` sets them: label protection of
returned gradients and secure aggregation of heads/tails (issue 15; README "What is protected")."""


class ServerSection(DeployModel):
    """The SuperLink: where it listens, its certificates and the state folder."""

    host: str = "0.0.0.0"
    port: int = Field(9092, ge=1, le=65535)
    state_dir: Path = Path("/var/lib/festa")
    certs: Path | None = Field(
        Path("/etc/festa/certs"), description="ca.pem, superlink.pem/.key, body.pem/.key"
    )
    insecure: bool = False
    connection: str = Field("festa", description="SuperLink connection name in flwr/config.toml")


class BodySection(DeployModel):
    """The body service the ServerApp starts: bind address and the address sites dial."""

    host: str = "0.0.0.0"
    port: int = Field(9093, ge=0, le=65535)
    endpoint: str = Field("", description="host:port the sites dial; default host:port")

    @field_validator("endpoint")
    @classmethod
    def _host_and_port(cls, v: str) -> str:
        if v:
            host, _, port = v.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{v!r} is not host:port with a port in 1..65535")
        return v


class ConsoleSection(DeployModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    admin_token: str = Field(
        "", description="admin-action token; needed off loopback (or FESTA_CONSOLE_ADMIN_TOKEN)"
    )

    @property
    def token(self) -> str:
        """The admin token from the file, else from FESTA_CONSOLE_ADMIN_TOKEN (keeps it out of files)."""
        return self.admin_token or os.environ.get("FESTA_CONSOLE_ADMIN_TOKEN", "")


class RunSection(DeployModel):
    """What `festa server start` submits (`submit = true`) and the run config it writes."""

    submit: bool = False
    app: Path = Field(
        Path("."), description="the festa app folder (pyproject.toml with [tool.flwr.app])"
    )
    config: dict[str, RunConfigValue] = Field(
        default_factory=dict, description="flwr run-config keys"
    )


class ServerSettings(DeployModel):
    server: ServerSection = ServerSection()
    body: BodySection = BodySection()
    console: ConsoleSection = ConsoleSection()
    run: RunSection = RunSection()

    # ---- derived paths -----------------------------------------------------------------

    @property
    def flwr_home(self) -> Path:
        return self.server.state_dir / "flwr"

    @property
    def store_path(self) -> Path:
        return self.server.state_dir / "festa.db"

    @property
    def logs(self) -> Path:
        return self.server.state_dir / "logs"

    @property
    def run_config_path(self) -> Path:
        return self.server.state_dir / "run-config.toml"

    def cert(self, name: str) -> Path | None:
        return None if self.server.insecure else Path(self.server.certs) / name  # type: ignore[arg-type]

    @property
    def control_address(self) -> str:
        """Where the local flwr CLI reaches the Control API (loopback when bound to all)."""
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        return f"{host}:{self.server.port}"

    # ---- checks ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ConfigError (naming the key) for insecure off loopback or missing files."""
        if self.server.insecure:
            require_loopback("server.insecure", [self.server.host, self.body.host])
        else:
            if self.server.certs is None:
                raise ConfigError("server.certs: needed unless server.insecure = true")
            require_files(
                "server.certs",
                {
                    n: self.cert(n)
                    for n in ("ca.pem", "superlink.pem", "superlink.key", "body.pem", "body.key")
                },
            )
        if self.console.enabled and not self.console.token and not is_loopback(self.console.host):
            raise ConfigError("console.admin-token: required when the console listens off loopback")
        if self.run.submit and not (self.run.app / "pyproject.toml").is_file():
            raise ConfigError(f"run.app: {self.run.app} has no pyproject.toml")
        self._check_run_config()

    def _check_run_config(self) -> None:
        """[run.config] must make a valid federation now, not when the ServerApp reads it."""
        from festa.server.flower_app import config_from_run_config  # lazily: imports Flower

        try:
            config_from_run_config(run_config(self))
        except ConfigError as exc:
            raise ConfigError(f"[run.config] {exc}") from exc


def executable(name: str) -> str:
    """A console script of this Python environment (flower-superlink, flwr, ...)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install flwr in this environment")
    return found


def prepare(s: ServerSettings) -> None:
    """Create the state folders, the flwr CLI config and the run config file."""
    for d in (s.server.state_dir, s.logs, s.server.state_dir / "runs"):
        d.mkdir(parents=True, exist_ok=True)
    write_flwr_config(s.flwr_home, s.server.connection, s.control_address, s.cert("ca.pem"))
    s.run_config_path.write_text(toml_table(run_config(s)))


def run_config(s: ServerSettings) -> dict[str, RunConfigValue]:
    """The flwr run config: the user's [run.config] plus the deployment's store, output and body TLS."""
    cfg: dict[str, RunConfigValue] = {
        "store": str(s.store_path.resolve()),
        "out": "",
        "body-host": s.body.host,
        "body-port": s.body.port,
        "body-endpoint": s.body.endpoint,
    }
    if not s.server.insecure:
        cfg["body-cert"] = str(s.cert("body.pem").resolve())  # type: ignore[union-attr]
        cfg["body-key"] = str(s.cert("body.key").resolve())  # type: ignore[union-attr]
        cfg["body-ca"] = str(s.cert("ca.pem").resolve())  # type: ignore[union-attr]  # mutual TLS
    cfg.update(DEPLOYMENT_PRIVACY)
    cfg.update(s.run.config)
    if not cfg["out"]:
        cfg["out"] = str((s.server.state_dir / "runs").resolve() / "{run-id}")
    return cfg


def toml_table(values: dict[str, RunConfigValue]) -> str:
    """Flat run-config keys as a TOML file body (what `flwr run --run-config FILE` reads)."""

    def fmt(v: RunConfigValue) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    return "".join(f'"{k}" = {fmt(v)}\n' for k, v in values.items())


def superlink_argv(s: ServerSettings) -> list[str]:
    """`flower-superlink` with TLS, node authentication and no runtime dependency installation."""
    argv = [
        executable("flower-superlink"),
        "--host",
        s.server.host,
        "--port",
        str(s.server.port),
        "--database",
        str(s.server.state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    if s.server.insecure:
        return [*argv, "--insecure"]
    return [
        *argv,
        "--ssl-ca-certfile",
        str(s.cert("ca.pem")),
        "--ssl-certfile",
        str(s.cert("superlink.pem")),
        "--ssl-keyfile",
        str(s.cert("superlink.key")),
        "--enable-supernode-auth",
    ]


def flwr_env(s: ServerSettings) -> dict[str, str]:
    return {"FLWR_HOME": str(s.flwr_home.resolve())}


def submit_argv(s: ServerSettings) -> list[str]:
    """`flwr run APP CONNECTION --run-config run-config.toml --stream`."""
    return [
        executable("flwr"),
        "run",
        str(s.run.app),
        s.server.connection,
        "--run-config",
        str(s.run_config_path.resolve()),
        "--stream",
    ]


def register_argv(s: ServerSettings, public_key: Path) -> list[str]:
    """`flwr supernode register KEY.pub CONNECTION`."""
    return [executable("flwr"), "supernode", "register", str(public_key), s.server.connection]
