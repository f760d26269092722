"""The site side of a deployment: settings (`site-*.toml`) and the commands they run.

A site runs the Flower SuperNode (TLS to the SuperLink, its own auth key, `--node-config` with
site id, task, data path, the CA that signed the body service and the site's client certificate
for it) and, when configured, its
restoration daemon (`festa.client.service`). Layout under `state-dir`: `flwr/` (the SuperNode's
FLWR_HOME: installed app bundles) and `logs/` (one log per supervised process).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pydantic import Field, field_validator

from festa.shared.config import ConfigError, check_task_names
from festa.shared.deploy import DeployModel, require_files, require_loopback


class SiteSection(DeployModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    task: str
    data: str = Field(
        description="the site's data folder (manifest.csv), or 'phantoms' for a demo site"
    )
    state_dir: Path = Path("/var/lib/festa-site")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return check_task_names([v])[0]


class SuperLinkSection(DeployModel):
    address: str = Field(description="host:port of the festa server's SuperLink")
    ca: Path | None = Field(
        None, description="the deployment CA (ca.pem); also pins the body service"
    )
    insecure: bool = False


class AuthSection(DeployModel):
    private_key: Path | None = Field(
        None, description="this site's key from `festa certs node SITE`"
    )
    body_cert: Path | None = Field(
        None,
        description="this site's client certificate for the body service (mutual TLS); "
        "default clients/<site>.pem beside superlink.ca, as `festa certs node SITE` writes it",
    )
    body_key: Path | None = Field(
        None, description="its private key; default clients/<site>.key beside superlink.ca"
    )


class SuperNodeSection(DeployModel):
    port: int = Field(9094, ge=1, le=65535, description="the SuperNode's local app API (loopback)")
    max_retries: int | None = Field(None, ge=0, description="reconnect attempts before exiting")


class RestorationSection(DeployModel):
    enabled: bool = False
    config: Path | None = Field(None, description="the restoration daemon's site TOML")


class SiteSettings(DeployModel):
    site: SiteSection
    superlink: SuperLinkSection
    auth: AuthSection = AuthSection()
    supernode: SuperNodeSection = SuperNodeSection()
    restoration: RestorationSection = RestorationSection()

    @property
    def flwr_home(self) -> Path:
        return self.site.state_dir / "flwr"

    @property
    def logs(self) -> Path:
        return self.site.state_dir / "logs"

    def body_identity(self) -> tuple[Path, Path]:
        """(certificate, key) this site presents to the body service's mutual-TLS port."""
        clients = Path(self.superlink.ca).parent / "clients"  # type: ignore[arg-type]
        return (
            self.auth.body_cert or clients / f"{self.site.id}.pem",
            self.auth.body_key or clients / f"{self.site.id}.key",
        )

    def check(self) -> None:
        """Raise ConfigError (naming the key) for insecure off loopback or missing files."""
        if self.superlink.insecure:
            require_loopback("superlink.insecure", [self.superlink.address])
        else:
            if self.superlink.ca is None:
                raise ConfigError("superlink.ca: needed unless superlink.insecure = true")
            if self.auth.private_key is None:
                raise ConfigError("auth.private-key: needed unless superlink.insecure = true")
            require_files("superlink", {"ca": self.superlink.ca})
            require_files("auth", {"private-key": self.auth.private_key})
            body_cert, body_key = self.body_identity()
            require_files("auth", {"body-cert": body_cert, "body-key": body_key})
        if self.site.data != "phantoms" and not Path(self.site.data).is_dir():
            raise ConfigError(f"site.data: no folder at {self.site.data}")
        if self.restoration.enabled:
            if self.restoration.config is None:
                raise ConfigError("restoration.config: needed when restoration.enabled = true")
            require_files("restoration", {"config": self.restoration.config})
            if importlib.util.find_spec("festa.client.service") is None:
                raise ConfigError(
                    "restoration.enabled: this festa build has no restoration daemon (client.service)"
                )


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config(s: SiteSettings) -> str:
    """The SuperNode's `--node-config` string the ClientApp reads."""
    data = s.site.data if s.site.data == "phantoms" else str(Path(s.site.data).resolve())
    items = {"site-id": s.site.id, "task": s.site.task, "data-path": data}
    if not s.superlink.insecure:
        items["body-ca"] = str(Path(s.superlink.ca).resolve())  # type: ignore[arg-type]
        body_cert, body_key = s.body_identity()
        items["body-cert"] = str(body_cert.resolve())
        items["body-key"] = str(body_key.resolve())
    return " ".join(f"{k}={_quote(v)}" for k, v in items.items())


def supernode_argv(s: SiteSettings) -> list[str]:
    """`flower-supernode` for this site."""
    exe = Path(sys.executable).parent / "flower-supernode"
    argv = [
        str(exe) if exe.exists() else "flower-supernode",
        "--superlink",
        s.superlink.address,
        "--port",
        str(s.supernode.port),
        "--node-config",
        node_config(s),
    ]
    if s.supernode.max_retries is not None:
        argv += ["--max-retries", str(s.supernode.max_retries)]
    if s.superlink.insecure:
        return [*argv, "--insecure"]
    return [
        *argv,
        "--root-certificates",
        str(s.superlink.ca),
        "--auth-supernode-private-key",
        str(s.auth.private_key),
    ]


def restoration_argv(s: SiteSettings) -> list[str] | None:
    """The restoration daemon's command, or None when the site does not run one."""
    if not s.restoration.enabled:
        return None
    return [
        sys.executable,
        "-m",
        "festa.client.service.cli",
        "serve",
        "--site",
        str(s.restoration.config),
    ]
