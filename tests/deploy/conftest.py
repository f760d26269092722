"""A real festa deployment on 127.0.0.1: certificates, `festa server start`, three
`festa client start` sites (TLS + SuperNode authentication), torn down even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from festa.server import certs
from festa.shared.deploy import free_port

REPO = Path(__file__).resolve().parents[2]
SITES = {"site-a": "classification", "site-b": "segmentation", "site-c": "classification"}
TINY_RUN = {
    "rounds": 2,
    "clients": 3,
    "local-steps": 2,
    "tasks": "classification,segmentation",
    "model.image-size": 32,
    "model.patch-size": 8,
    "model.embed-dim": 32,
    "model.depth": 2,
    "model.num-heads": 2,
    "optim.batch-size": 8,
    "round-timeout-s": 150.0,
    # groups of 2 and 1 are below secure aggregation's minimum of 3, which deployments turn on
    # by default (test_secure_deployment.py runs the defaults on three sites of one task)
    "secure-aggregation": False,
}


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | Path):
        return '"' + str(v) + '"'
    return repr(v)


def write_toml(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f'"{k}" = {toml_value(v)}' for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def festa(*args: str) -> list[str]:
    """argv for a `festa` sub-command of this checkout."""
    return [sys.executable, "-m", "festa.shared.cli", *args]


@dataclass
class Deployment:
    root: Path
    certs: Path
    server_toml: Path
    state: Path
    superlink_port: int
    console_port: int
    site_tomls: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def flwr_env(self) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.state / "flwr")}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["flwr", *args],
            cwd=REPO,
            env=self.flwr_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def flwr_run(self, timeout: float = 360) -> subprocess.CompletedProcess:
        """`flwr run` of this checkout with the run config `festa server start` wrote."""
        argv = ["run", str(REPO), "festa", "--run-config", str(self.state / "run-config.toml")]
        return self.flwr(*argv, "--stream", timeout=timeout)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every daemon (they stop their children), then SIGKILL whatever is left,
        including children recorded in *.pgid files."""
        for proc in reversed(list(self.procs.values())):
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pgid_file in self.root.rglob("*.pgid"):
            _killpg(int(pgid_file.read_text()), signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def online_nodes(dep: Deployment) -> int:
    """SuperNodes the SuperLink reports online (`flwr supernode ls`)."""
    import json

    out = dep.flwr("supernode", "ls", "festa", "--format", "json")
    if out.returncode != 0 or "{" not in out.stdout:
        return 0
    nodes = json.loads(out.stdout[out.stdout.index("{") :]).get("nodes", [])
    return sum(1 for n in nodes if n.get("status") == "online")


def make_certs(d: Path, sites: dict[str, str] = SITES) -> Path:
    certs.init_ca(d)
    certs.issue_server_cert(d, "superlink")
    certs.issue_server_cert(d, "body")
    for site in [*sites, "rogue"]:
        certs.node_key(d, site)
        certs.issue_client_cert(d, site)  # the body port is mutual TLS
    return d


@contextmanager
def running_deployment(
    root: Path, sites: dict[str, str], run_config: dict[str, object]
) -> Iterator[Deployment]:
    """CA, SuperLink + console (`festa server start`), one registered `festa client start` per
    site of `sites` (id -> task), torn down on exit."""
    cdir = make_certs(root / "certs", sites)
    state = root / "server"
    sl_port, console_port, body_port = free_port(), free_port(), free_port()
    server_toml = write_toml(
        root / "server.toml",
        {
            "server": {"host": "127.0.0.1", "port": sl_port, "state-dir": state, "certs": cdir},
            "body": {"host": "127.0.0.1", "port": body_port},
            "console": {"host": "127.0.0.1", "port": console_port},
            "run": {"app": REPO},
            "run.config": run_config,
        },
    )
    site_tomls = {
        site: write_toml(
            root / f"{site}.toml",
            {
                "site": {"id": site, "task": task, "data": "phantoms", "state-dir": root / site},
                "superlink": {"address": f"127.0.0.1:{sl_port}", "ca": cdir / "ca.pem"},
                "auth": {"private-key": cdir / "nodes" / f"{site}.key"},
                "supernode": {"port": free_port()},
            },
        )
        for site, task in sites.items()
    }
    dep = Deployment(root, cdir, server_toml, state, sl_port, console_port, site_tomls)
    try:
        dep.start("server", festa("server", "start", "--config", str(server_toml)))
        wait_until(
            lambda: listening(sl_port) and listening(console_port), 60, "SuperLink and console"
        )
        for site in sites:
            reg = subprocess.run(
                festa(
                    "server",
                    "register-node",
                    str(cdir / "nodes" / f"{site}.pub"),
                    "--config",
                    str(server_toml),
                ),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=180,  # the flwr CLI alone takes over a minute on a loaded 2-core machine
            )
            assert reg.returncode == 0, reg.stdout + reg.stderr
        for site, path in site_tomls.items():
            dep.start(site, festa("client", "start", "--site", str(path)))
        wait_until(
            lambda: online_nodes(dep) == len(sites),
            120,
            f"{len(sites)} SuperNodes online",
            poll=1.0,
        )
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Three sites of two tasks (groups of 2 and 1: secure aggregation off, see TINY_RUN)."""
    with running_deployment(tmp_path_factory.mktemp("deploy"), SITES, TINY_RUN) as dep:
        yield dep
