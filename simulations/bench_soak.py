"""Fault-injection soak: a federation of client processes under seeded random faults.

    nice -n 19 python -m festa.simulations.bench_soak [--rounds 20] [--clients 6] [--seed 0]

Two runs of the same seeded federation (`FederationConfig`, tiny model, few local steps), each
with real processes: one server process (`Federation` + the gRPC body service + a
`ProcessTransport`, the clients' message channel) and one process per client site (the same
`festa.client.local_training` handlers as every engine, dialling the body service). The first
run has no faults; the second has, drawn from `--seed`:

- client processes killed (SIGKILL) in the middle of a training step and restarted; the round
  loop drops them, and they rejoin at the next round (`rejoin_wait_s`);
- a lossy and latent link between every client and the body service (`festa.simulations.netem`:
  RTT, rate and a share of chunks retransmitted late);
- the server process killed (SIGKILL) mid-round and restarted with `resume=True`: the run
  continues from its last checkpoint and the client processes reconnect;
- a site restoration daemon (`festa.client.service`, a real `serve` process) fed images (some
  malformed) every round and killed (SIGKILL) and restarted; at the end its journal must account
  for every input (restored or quarantined): items lost must be 0.

Reports rounds completed, clients dropped and rejoined, server restarts, daemon items lost and
each task's final metrics next to the fault-free run's, and appends the table to BENCHMARKS.md.

Not the Flower deployment path: the clients' messages travel over a
`multiprocessing.connection` channel instead of SuperLink/SuperNodes (see BENCHMARKS.md); the
body service, round loop, checkpoints/resume, client handlers and site daemon are the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from festa.client.service.journal import JOURNAL_NAME, connect, counts
from festa.shared.config import FederationConfig, model_preset

REPO = Path(__file__).resolve().parents[1]
AUTHKEY = b"festa-soak"
PHANTOM64 = REPO / "client" / "restoration" / "weights" / "phantom64"


# ---- the server side: a transport whose clients are processes -----------------------------


def _pack(state: dict | None) -> bytes | None:
    """A state dict as bytes: pickling tensors through a Connection would share their storage
    by file descriptor (torch.multiprocessing), which needs a common parent process."""
    if state is None:
        return None
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _unpack(data: bytes | None) -> dict | None:
    if data is None:
        return None
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


@dataclass
class _Peer:
    """One connected client process: its channel and what it said in its hello."""

    conn: Connection
    info: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0


class ProcessTransport:
    """`festa.server.federation.Transport` to client processes that dial `address`.

    A client process sends `("hello", node_id, describe_site(...))`, then answers each
    `("run", seq, kind, state, config)` with `("reply", seq, metrics, state, error)`. A process
    that dies (or is killed) closes its channel: its pending instruction gets an error reply and
    the node is offline until a process with its node id dials again."""

    def __init__(self, address: tuple[str, int], expected: int):
        self.expected = expected
        self.listener = Listener(address, authkey=AUTHKEY)
        self.peers: dict[int, _Peer] = {}
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, name="soak-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
                hello = conn.recv() if conn.poll(30) else None
            except (OSError, EOFError, AuthenticationError):
                continue
            if not (isinstance(hello, tuple) and len(hello) == 3 and hello[0] == "hello"):
                conn.close()
                continue
            with self._guard:
                old = self.peers.get(int(hello[1]))
                self.peers[int(hello[1])] = _Peer(conn, dict(hello[2]))
            if old is not None:
                old.conn.close()

    def _client_info(self, node_id: int, info: dict[str, Any]) -> Any:
        from festa.server.federation import ClientInfo

        return ClientInfo(
            node_id=node_id,
            site_id=str(info["site-id"]),
            task=str(info["task"]),
            num_train=int(info["num-train"]),
            num_val=int(info["num-val"]),
        )

    def describe(self, cfg: FederationConfig, timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while len(self.online_nodes()) < self.expected and time.monotonic() < deadline:
            time.sleep(0.2)
        return sorted(
            self.describe_nodes(cfg, sorted(self.online_nodes()), timeout_s),
            key=lambda c: c.site_id,
        )

    def online_nodes(self) -> set[int]:
        with self._guard:
            return {n for n, p in self.peers.items() if not p.conn.closed}

    def describe_nodes(self, cfg: FederationConfig, node_ids: list[int], timeout_s: float) -> list:
        with self._guard:
            peers = {n: self.peers[n] for n in node_ids if n in self.peers}
        return [self._client_info(n, p.info) for n, p in peers.items() if not p.conn.closed]

    def send(self, kind: str, round_number: int, instructions: list, timeout_s: float) -> list:
        if not instructions:
            return []
        with futures.ThreadPoolExecutor(len(instructions)) as pool:
            return list(pool.map(lambda ins: self._one(kind, ins, timeout_s), instructions))

    def _one(self, kind: str, instruction: Any, timeout_s: float) -> Any:
        from festa.server.federation import Reply

        with self._guard:
            peer = self.peers.get(instruction.client.node_id)
        if peer is None or peer.conn.closed:
            return Reply(instruction.client, error="client process not connected")
        with peer.lock:
            peer.seq += 1
            seq = peer.seq
            deadline = time.monotonic() + timeout_s
            try:
                peer.conn.send(("run", seq, kind, _pack(instruction.state), instruction.config))
                while (left := deadline - time.monotonic()) > 0 and peer.conn.poll(left):
                    message = peer.conn.recv()
                    if message[1] == seq:  # older replies (a timed-out instruction) are dropped
                        _, _, metrics, state, error = message
                        return Reply(
                            instruction.client, metrics=metrics, state=_unpack(state), error=error
                        )
            except (OSError, EOFError) as exc:
                peer.conn.close()
                return Reply(instruction.client, error=f"client process lost: {exc!r}")
        return Reply(instruction.client, error=f"no reply within {timeout_s:.0f} s")


def serve(args: argparse.Namespace) -> None:
    """The server process: `Federation(...).run(ProcessTransport)`, resumed with --resume."""
    from festa.server.federation import Federation
    from festa.server.store import RunStore
    from festa.shared.runtime import configure_process

    configure_process(threads=1)
    cfg = FederationConfig.model_validate_json(Path(args.config).read_text())
    out = Path(args.out)
    transport = ProcessTransport(("127.0.0.1", args.port), cfg.clients)
    with RunStore(out / "festa.db") as store:
        Federation(cfg, out / "run", resume=args.resume, store=store).run(transport)


# ---- a client process ------------------------------------------------------------------------


def client(args: argparse.Namespace) -> None:
    """One client site: dial the server, answer instructions; redial when the server is gone.

    Writes `status-<node>.txt` ("train 3 busy" / "idle") so the fault driver can kill it inside
    a step. With --rtt-ms, every body-service connection goes through a `WanLink`."""
    from festa.client.local_training import describe_site, simulation_site
    from festa.server.federation import ClientInfo, Instruction
    from festa.shared.runtime import configure_process
    from festa.simulations.inprocess import InProcessClient
    from festa.simulations.netem import WanLink

    configure_process(threads=1)
    cfg = FederationConfig.model_validate_json(Path(args.config).read_text())
    node_id = args.index + 1
    site = InProcessClient(node_id, simulation_site(cfg, args.index))
    status = Path(args.out) / f"status-{node_id}.txt"
    links: dict[str, WanLink] = {}

    def routed(config: dict[str, Any]) -> dict[str, Any]:
        if args.rtt_ms <= 0:
            return config
        target = str(config["body-endpoint"])
        if target not in links:
            host, _, port = target.rpartition(":")
            links[target] = WanLink(
                (host, int(port)),
                rtt_ms=args.rtt_ms,
                rate_mbit=args.rate_mbit,
                loss=args.loss,
                seed=args.seed * 100 + node_id,
            )
            links[target].start()
        return {**config, "body-endpoint": links[target].address}

    given_up = time.monotonic() + 900
    while time.monotonic() < given_up:
        try:
            conn = Client(("127.0.0.1", args.port), authkey=AUTHKEY)
        except (OSError, EOFError, AuthenticationError):
            time.sleep(0.5)
            continue
        try:
            conn.send(("hello", node_id, describe_site(site.site)))
            while True:
                _, seq, kind, state, config = conn.recv()
                status.write_text(f"{kind} {config['round']} busy")
                info = ClientInfo(node_id, str(config["site-id"]), str(config["task"]), 0, 0)
                reply = site.handle(kind, Instruction(info, _unpack(state), routed(config)))
                status.write_text("idle")
                conn.send(("reply", seq, reply.metrics, _pack(reply.state), reply.error))
        except (OSError, EOFError):
            status.write_text("idle")
            given_up = time.monotonic() + 900
            time.sleep(0.5)


# ---- the fault driver ------------------------------------------------------------------------


def _python(*argv: str) -> list[str]:
    return [sys.executable, "-m", "festa.simulations.bench_soak", *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


class Procs:
    """Child processes by name, each logging to <work>/<name>.log; SIGKILL and restart."""

    def __init__(self, work: Path):
        self.work = work
        self.argv: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str] | None = None) -> None:
        argv = argv or self.argv[name]
        self.argv[name] = argv
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class FaultPlan:
    """Seeded faults: per round, the client killed mid-step (or none) and the delay into the
    step; the rounds in which the server and the daemon are killed; the link's shape."""

    client_kills: dict[int, tuple[int, float]]
    server_kills: set[int]
    daemon_kills: set[int]
    rtt_ms: float
    rate_mbit: float
    loss: float

    @classmethod
    def draw(cls, seed: int, rounds: int, clients: int) -> FaultPlan:
        rng = random.Random(seed)
        kills = {
            r: (rng.randrange(clients), rng.uniform(0.3, 2.0))
            for r in range(2, rounds + 1)
            if rng.random() < 0.4
        }
        server = set(rng.sample(range(3, rounds), 2))
        daemon = set(rng.sample(range(2, rounds), 3))
        return cls(kills, server, daemon, rtt_ms=40.0, rate_mbit=50.0, loss=0.02)

    @classmethod
    def none(cls) -> FaultPlan:
        return cls({}, set(), set(), rtt_ms=0.0, rate_mbit=0.0, loss=0.0)


def _rounds_done(run: Path) -> int:
    path = run / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _busy(work: Path, node_id: int, r: int) -> bool:
    path = work / f"status-{node_id}.txt"
    try:
        return path.read_text() == f"train {r} busy"
    except OSError:
        return False


def _site_toml(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "incoming").mkdir(exist_ok=True)
    toml = root / "site.toml"
    toml.write_text(
        "\n".join(
            [
                'site_id = "soak-site"',
                "[folders]",
                'incoming = "incoming"',
                'restored = "restored"',
                'quarantine = "quarantine"',
                'state = "state"',
                "[restore]",
                'degradation = "noise:poisson:dose=2000,read=0.01"',
                'method = "dps"',
                f'model_dir = "{PHANTOM64}"',
                "nfe = 3",
                "batch_size = 2",
                "seed = 0",
                "[watch]",
                "poll_seconds = 0.5",
                "settle_seconds = 0.0",
                "[http]",
                "enabled = false",
                "",
            ]
        )
    )
    return toml


def _daemon_inputs(incoming: Path, r: int, seed: int) -> list[Path]:
    """Two phantom radiographs and, every third round, one malformed file for round `r`."""
    import io

    import numpy as np
    from PIL import Image

    from festa.shared.data.phantoms import phantom_images

    paths = []
    for i, image in enumerate(phantom_images(2, 64, seed=seed * 1000 + r)):
        buf = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="PNG")
        paths.append(incoming / f"r{r:02d}_{i}.png")
        paths[-1].write_bytes(buf.getvalue())
    if r % 3 == 0:
        paths.append(incoming / f"r{r:02d}_bad.png")
        paths[-1].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (r + 1))
    return paths


def _journal(state: Path) -> dict[str, int]:
    """The daemon journal's counts per status, read-only; {} before the daemon created it."""
    db = state / JOURNAL_NAME
    if not db.exists():
        return {}
    conn = connect(db, readonly=True)
    try:
        return counts(conn)
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


class Soak:
    """One run of `cfg` under `plan` in `work`: the server, the clients and the site daemon as
    child processes, the plan's faults injected round by round."""

    def __init__(
        self, cfg: FederationConfig, work: Path, plan: FaultPlan, seed: int, log: Callable
    ):
        from festa.shared.deploy import free_port

        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        (work / "config.json").write_text(cfg.model_dump_json())
        self.cfg, self.work, self.plan, self.seed, self.log = cfg, work, plan, seed, log
        self.run = work / "run"
        self.procs = Procs(work)
        self.common = ["--config", str(work / "config.json"), "--out", str(work)]
        self.common += ["--port", str(free_port())]
        self.daemon_root = work / "daemon"
        self.inputs: list[Path] = []
        self.events = {"client kills": 0, "kills mid-step": 0, "server kills": 0}
        self.events["daemon kills"] = 0

    def start(self) -> None:
        plan = self.plan
        link = ["--rtt-ms", str(plan.rtt_ms), "--rate-mbit", str(plan.rate_mbit)]
        link += ["--loss", str(plan.loss), "--seed", str(self.seed)]
        self.procs.start("server", _python("serve", *self.common))
        for i in range(self.cfg.clients):
            self.procs.start(
                f"client-{i + 1}", _python("client", *self.common, "--index", str(i), *link)
            )
        toml = _site_toml(self.daemon_root)
        self.procs.start(
            "daemon",
            [sys.executable, "-m", "festa.client.service.cli", "serve", "--site", str(toml)],
        )

    def wait_round(self, r: int) -> None:
        """Until round `r - 1` is recorded (rounds.jsonl), failing if the server exits first."""
        _wait(
            lambda: _rounds_done(self.run) >= r - 1 or not self.procs.alive("server"),
            900,
            f"round {r - 1} to finish",
            0.2,
        )
        if not self.procs.alive("server"):
            raise RuntimeError(f"the server exited before round {r}; see {self.work}/server.log")

    def busy(self, r: int, nodes: list[int]) -> bool:
        """Whether any of `nodes` is inside its `train` instruction of round `r`."""
        return any(_busy(self.work, n, r) for n in nodes)

    def kill_client(self, r: int, index: int, delay: float) -> None:
        """SIGKILL client `index` `delay` s into its training step of round `r`; restart it."""
        node = index + 1
        try:
            _wait(lambda: self.busy(r, [node]), 120, f"client {node} in round {r}", 0.05)
            time.sleep(delay)
            mid = self.busy(r, [node])
        except TimeoutError:
            mid = False
        self.procs.kill(f"client-{node}")
        self.procs.start(f"client-{node}")
        self.events["client kills"] += 1
        self.events["kills mid-step"] += int(mid)
        self.log(f"round {r}: killed client {node} ({'mid-step' if mid else 'between steps'})")

    def kill_daemon(self, r: int) -> None:
        time.sleep(1.0)
        self.procs.kill("daemon")
        self.procs.start("daemon")
        self.events["daemon kills"] += 1
        self.log(f"round {r}: killed and restarted the site daemon")

    def kill_server(self, r: int) -> None:
        """SIGKILL the server once round `r` trains; restart it with --resume."""
        every = list(range(1, self.cfg.clients + 1))
        try:
            _wait(lambda: self.busy(r, every), 120, f"round {r} to start", 0.05)
            time.sleep(1.0)
        except TimeoutError:
            pass
        self.procs.kill("server")
        self.procs.start("server", _python("serve", *self.common, "--resume"))
        self.events["server kills"] += 1
        self.log(f"round {r}: killed the server mid-round; restarted it with --resume")

    def settled(self) -> int:
        """Daemon inputs with a final outcome (restored or quarantined)."""
        journal = _journal(self.daemon_root / "state")
        return journal.get("restored", 0) + journal.get("quarantined", 0)

    def drive(self) -> dict:
        """The whole run: rounds with their faults, then the daemon drained; the result."""
        started = time.monotonic()
        self.start()
        try:
            for r in range(1, self.cfg.rounds + 1):
                self.wait_round(r)
                self.inputs += _daemon_inputs(self.daemon_root / "incoming", r, self.seed)
                if r in self.plan.client_kills:
                    self.kill_client(r, *self.plan.client_kills[r])
                if r in self.plan.daemon_kills:
                    self.kill_daemon(r)
                if r in self.plan.server_kills:
                    self.kill_server(r)
            _wait(lambda: not self.procs.alive("server"), 900, "the run to finish", 0.5)
            seconds = time.monotonic() - started
            if not (self.run / "summary.json").exists():
                raise RuntimeError(
                    f"the server exited without a summary; see {self.work}/server.log"
                )
            _wait(lambda: self.settled() >= len(self.inputs), 900, "the daemon to settle", 0.5)
        finally:
            self.procs.stop_all()
        return self.result(seconds)

    def result(self, seconds: float) -> dict:
        summary = json.loads((self.run / "summary.json").read_text())
        history = [
            json.loads(line) for line in (self.run / "rounds.jsonl").read_text().splitlines()
        ]
        with sqlite3.connect(self.work / "festa.db") as db:
            kinds = dict(db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
            store_runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        journal = _journal(self.daemon_root / "state")
        return {
            "state": summary["state"],
            "rounds": len(history),
            "dropped": sum(len(h["dropped"]) for h in history),
            "rejoined": kinds.get("rejoined", 0),
            "store_runs": store_runs,
            "final": summary["final"],
            "run_seconds": seconds,
            "daemon_inputs": len(self.inputs),
            "journal": journal,
            "items_lost": len(self.inputs) - self.settled(),
            **self.events,
        }


def soak_config(args: argparse.Namespace) -> FederationConfig:
    """The soak's federation: tiny model, few local steps, no simulated scanners, rejoin on."""
    return FederationConfig(
        model=model_preset("tiny", embed_dim=64, depth=2, num_heads=2),
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.local_steps,
        seed=args.seed,
        degrade="none",
        restore="none",
        step_deadline_s=20.0,
        round_timeout_s=180.0,
        rejoin_wait_s=120.0,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    bench = sub.add_parser("bench", help="the two runs and the report (default)")
    for p in (parser, bench):
        p.add_argument("--rounds", type=int, default=20)
        p.add_argument("--clients", type=int, default=6)
        p.add_argument("--local-steps", type=int, default=4)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_soak")
        p.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
        p.add_argument(
            "--fault-free-only",
            action="store_true",
            help="only the fault-free run (a seed's spread)",
        )
    for role in ("serve", "client"):
        p = sub.add_parser(role)
        p.add_argument("--config", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--resume", action="store_true")
        p.add_argument("--index", type=int, default=0)
        p.add_argument("--rtt-ms", type=float, default=0.0)
        p.add_argument("--rate-mbit", type=float, default=0.0)
        p.add_argument("--loss", type=float, default=0.0)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "serve":
        return serve(args)
    if args.role == "client":
        return client(args)
    report(args)


def report(args: argparse.Namespace) -> None:
    """Run fault-free, then with faults; print and publish the comparison."""
    from rich.console import Console

    from festa.shared.tasks import primary_metric
    from festa.simulations.benchmark_table import machine_line, publish

    console = Console()
    machine = machine_line()
    cfg = soak_config(args)
    plan = FaultPlan.draw(args.seed, cfg.rounds, cfg.clients)
    console.print(f"fault plan: {plan}")
    results = {}
    arms = [("fault-free", FaultPlan.none())] + ([] if args.fault_free_only else [("faults", plan)])
    for name, p in arms:
        console.print(f"[bold]{name} run[/]")
        results[name] = Soak(cfg, args.work / name, p, args.seed, console.print).drive()
        console.print(json.dumps(results[name], indent=1))
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
    metrics = [(t, primary_metric(t)) for t in cfg.tasks]
    columns = [
        "run",
        "state",
        "rounds",
        "client kills (mid-step)",
        "server kills",
        "client-rounds dropped",
        "rejoined",
        "store runs",
        "daemon kills",
        "daemon inputs",
        "restored / quarantined",
        "items lost",
        "wall s",
        *(f"final {t} {k}" for t, k in metrics),
    ]
    rows = [
        [
            name,
            res["state"],
            res["rounds"],
            f"{res['client kills']} ({res['kills mid-step']})",
            res["server kills"],
            res["dropped"],
            res["rejoined"],
            res["store_runs"],
            res["daemon kills"],
            res["daemon_inputs"],
            f"{res['journal'].get('restored', 0)} / {res['journal'].get('quarantined', 0)}",
            res["items_lost"],
            round(res["run_seconds"]),
            *(res["final"].get(t, {}).get(k, float("nan")) for t, k in metrics),
        ]
        for name, res in results.items()
    ]
    command = (
        f"nice -n 19 python -m festa.simulations.bench_soak --rounds {args.rounds} "
        f"--clients {args.clients} --local-steps {args.local_steps} --seed {args.seed}"
        + (" --fault-free-only" if args.fault_free_only else "")
    )
    notes = (
        f"Fault plan drawn from seed {args.seed}: client killed mid-step in rounds "
        f"{sorted(plan.client_kills)}, server killed mid-round in rounds {sorted(plan.server_kills)}, "
        f"daemon killed in rounds {sorted(plan.daemon_kills)}; link RTT {plan.rtt_ms:g} ms, "
        f"{plan.rate_mbit:g} Mbit/s, {plan.loss:.0%} of chunks retransmitted after 200 ms. "
        f"Model {cfg.model.embed_dim}-wide x {cfg.model.depth} blocks, {cfg.local_steps} local "
        f"steps, phantom data (no cxr-open), one seed: a single run per arm, so the final "
        "metrics differ by the faults and by run-to-run noise together."
    )
    publish(
        "Fault-injection soak (client, server and daemon kills; lossy, latent link)",
        command,
        columns,
        rows,
        notes=notes,
        machine=machine,
        console=console,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
