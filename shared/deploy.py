"""Pieces both deployment daemons share: TOML settings with kebab-case keys, the loopback
rule for `--insecure`, and file checks with messages that name the key."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from festa.shared.config import ConfigError, load_toml

INSECURE_WARNING = (
    "INSECURE: TLS is OFF - everything on the wire is readable and node identities are not "
    "checked. This is only allowed on loopback (127.0.0.1) for trying festa out; never use it "
    "between machines."
)

M = TypeVar("M", bound="DeployModel")


class DeployModel(BaseModel):
    """Base for deployment settings: TOML keys are kebab-case, unknown keys are errors."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=lambda s: s.replace("_", "-"),
        populate_by_name=True,
    )


def load_settings(
    path: str | Path, cls: type[M], *, insecure_section: str = "", insecure: bool = False
) -> M:
    """Read, validate and `check()` a deployment TOML file (relative paths stay relative to the
    current directory); `insecure` turns on `<insecure_section>.insecure`. Raises ConfigError
    naming the bad key."""
    s = load_toml(path, cls)
    if insecure:
        part = getattr(s, insecure_section)
        s = s.model_copy(update={insecure_section: part.model_copy(update={"insecure": True})})
    s.check()  # type: ignore[attr-defined]
    return s


def is_loopback(host: str) -> bool:
    """True for localhost / 127.x / ::1 (a host:port string is accepted)."""
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(where: str, hosts: list[str]) -> None:
    """`--insecure` is for loopback only: refuse any other address."""
    bad = [h for h in hosts if not is_loopback(h)]
    if bad:
        raise ConfigError(
            f"{where}: --insecure is only allowed on loopback, but {bad} is not 127.0.0.1/localhost"
        )


def require_files(section: str, files: dict[str, Any]) -> None:
    """Every named file must exist; the message names the TOML key."""
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{section}.{key}: no file at {path}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (for tests and the loopback deployment)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_flwr_config(flwr_home: Path, name: str, address: str, root_cert: Path | None) -> Path:
    """Write `flwr_home/config.toml` with one SuperLink connection `name` (the default); the
    `flwr` CLI (run, ls, supernode register) reads it when FLWR_HOME points here."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{name}"',
        "",
        f"[superlink.{name}]",
        f'address = "{address}"',
    ]
    if root_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{Path(root_cert).resolve()}"')
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
