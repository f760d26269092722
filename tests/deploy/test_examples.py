"""The files in deploy/ are valid: the example TOMLs match the settings schema, the compose
file is accepted by Docker Compose, local.sh is valid bash."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from festa.client.deploy import SiteSettings
from festa.server.deploy import ServerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_server_and_site_files_match_the_schema() -> None:
    server = ServerSettings.model_validate(tomllib.loads((DEPLOY / "server.toml").read_text()))
    assert not server.server.insecure and server.body.endpoint
    sites = [
        SiteSettings.model_validate(tomllib.loads(p.read_text()))
        for p in sorted(DEPLOY.glob("site-*.toml"))
    ]
    assert [s.site.id for s in sites] == ["site-a", "site-b", "site-c"]
    assert len({s.site.task for s in sites}) == 3 and not any(s.superlink.insecure for s in sites)


def _compose() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_file_is_accepted() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    out = subprocess.run(
        [*compose, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_local_sh_is_valid_bash_and_prints_usage() -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / "local.sh")]).returncode == 0
    out = subprocess.run(["bash", str(DEPLOY / "local.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and "up|run|status|down" in out.stderr
