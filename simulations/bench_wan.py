"""Round time over emulated WAN links (issue 8), with and without pipelined micro-batches.

    python -m festa.simulations.bench_wan            # ~14 min on 2 loaded cores; add --depths 2,4,8 for K=2 too

Every measurement is a real `festa.server.federation.Federation` run over the in-process transport
(`festa.simulations.inprocess`): the product's round loop and body service in this process, each site
a client thread running the product's client handlers (`festa.client.local_training`). Every site
reaches the body service through its own user-space WAN link (`festa.simulations.netem`, one proxy
subprocess per site: RTT 20 or 80 ms, 100 Mbit/s each way; the transport's `endpoints`), or
directly over loopback (tiny preset, 64 px phantoms, 3 sites = 3 tasks, 15 local steps of
batch 16, torch single-threaded).

What is timed ("round s"): the training half of one round, the transport's `train` send: from
the release of every site's thread until the last site has finished its 15 steps and closed
its stream; it includes building the model and connecting over the link (TCP + HTTP/2 +
Hello). Flower's own messages (one per site per round) are not included. Each configuration
is measured `--repeats` times, interleaved with the others so that load from other processes
hits all of them alike; the table shows the median. Each measured round is round 1 of a fresh
run, so the body starts from the same weights and every site trains on the same batches.

Accuracy effect: the same 3 sites train for `--rounds` rounds over loopback (body trains every
round, heads/tails averaged per task after each) with each schedule, and the final validation
primary metric of every task (`festa.shared.tasks.primary_metric`) is reported, mean and range of
`--accuracy-repeats` runs; at K > 1 each `--body-lr` rule is a schedule of its own.

    python -m festa.simulations.bench_wan --skip-round-time   # accuracy only, ~8 min The
network does not change the numbers a schedule computes (async interleaving aside), only its
time, so accuracy is measured without the proxies.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from festa.client.site_data import federation_plan
from festa.server.federation import Federation
from festa.server.records import RoundRecord
from festa.shared.config import (
    DataConfig,
    FederationConfig,
    OptimConfig,
    ScheduleConfig,
    model_preset,
)
from festa.shared.tasks import primary_metric
from festa.simulations.benchmark_table import machine_line, publish
from festa.simulations.inprocess import InProcessTransport

REPO = Path(__file__).resolve().parents[1]
QUIET = Console(quiet=True)  # the runs' own round lines; the benchmark shows a progress bar


BODY_LR_LABEL = {"constant": "x1", "sqrt": "/sqrt K", "linear": "/K"}


@dataclass(frozen=True)
class Schedule:
    mode: str
    depth: int
    body_lr: str = "linear"  # FederationConfig.pipeline_body_lr; only matters at K > 1

    @property
    def name(self) -> str:
        rule = f" (body lr {BODY_LR_LABEL[self.body_lr]})" if self.depth > 1 else ""
        return f"{self.mode} K={self.depth}{rule}"

    def config(self, cfg: FederationConfig, **update: Any) -> FederationConfig:
        return cfg.model_copy(
            update={
                "mode": self.mode,
                "pipeline_depth": self.depth,
                "pipeline_body_lr": self.body_lr,
                **update,
            }
        )


@dataclass
class Measured:
    seconds: float
    bytes_up: int  # per site, mean (client -> server)
    bytes_down: int


@contextmanager
def wan_proxy(target_port: int, rtt_ms: float, rate_mbit: float) -> Iterator[str]:
    """One `python -m festa.simulations.netem` subprocess in front of the body service; yields the
    address a site dials."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "festa.simulations.netem", "--listen", "127.0.0.1:0"]
        + ["--target", f"127.0.0.1:{target_port}", "--rtt-ms", str(rtt_ms)]
        + ["--rate-mbit", str(rate_mbit)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"netem 127\.0\.0\.1:(\d+)", line)
        if match is None:
            raise RuntimeError(f"netem did not start: {line}{proc.stderr.read()}")
        yield f"127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.wait(10)


class Bench:
    """The base config and a work folder; every measurement is a real `Federation` run over
    the in-process transport (the product's round loop, body service and client code)."""

    def __init__(self, cfg: FederationConfig, work: Path):
        # A fixed body port, so that the WAN proxies can be started before the service.
        self.cfg = cfg.model_copy(update={"body_port": _free_port()})
        self.site_ids = federation_plan(cfg)[1]
        self.port = self.cfg.body_port
        self.work = work
        self.runs = 0

    def run(
        self, cfg: FederationConfig, endpoints: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], InProcessTransport, list[RoundRecord]]:
        """One whole run of `cfg` (its own folder, the body from its seeded initialisation);
        site i dials `endpoints[site]` when given."""
        self.runs += 1
        transport = InProcessTransport(cfg, endpoints)
        federation = Federation(cfg, self.work / f"run-{self.runs:03d}", console=QUIET)
        summary = federation.run(transport)
        return summary, transport, federation.history

    def round(self, cfg: FederationConfig, endpoints: dict[str, str] | None = None) -> Measured:
        """One training round (the body trains) with every site through its endpoint."""
        _, transport, history = self.run(cfg.model_copy(update={"rounds": 1}), endpoints)
        record = history[0]
        if record.dropped:
            raise RuntimeError(f"a site failed: {record.dropped}")
        train = next(t for t in transport.timings if t.kind == "train")
        clients = record.clients.values()
        up = statistics.mean(c.bytes_sent for c in clients)
        down = statistics.mean(c.bytes_received for c in clients)
        return Measured(train.seconds, int(up), int(down))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_round_time(
    bench: Bench,
    schedules: list[Schedule],
    wires: list[str],
    rtts: list[float],
    rate_mbit: float,
    repeats: int,
    progress: Progress,
) -> dict[tuple[str, float, Schedule], list[Measured]]:
    results: dict[tuple[str, float, Schedule], list[Measured]] = {}
    with ExitStack() as stack:
        endpoints = {
            rtt: {
                site: stack.enter_context(wan_proxy(bench.port, rtt, rate_mbit))
                for site in bench.site_ids
            }
            if rtt > 0
            else None
            for rtt in rtts
        }
        total = repeats * len(wires) * len(rtts) * len(schedules)
        task = progress.add_task("rounds (wire x RTT x schedule)", total=total)
        for rtt in rtts:  # warm-up, not measured: first connections, loaders, allocator
            bench.round(bench.cfg, endpoints[rtt])
        for _ in range(repeats):
            for wire in wires:
                for rtt in rtts:
                    for schedule in schedules:
                        cfg = schedule.config(bench.cfg, wire=wire)
                        measured = bench.round(cfg, endpoints[rtt])
                        results.setdefault((wire, rtt, schedule), []).append(measured)
                        progress.advance(task)
    return results


def bench_accuracy(
    bench: Bench, schedules: list[Schedule], rounds: int, repeats: int, progress: Progress
) -> dict[Schedule, list[dict[str, float]]]:
    """`rounds` rounds of each schedule over loopback, `repeats` times (interleaved); the final
    validation primary metric per task of every repeat (the body trains every round and the
    heads/tails are averaged per task after every round). Repeats differ only by the async
    interleaving."""
    out: dict[Schedule, list[dict[str, float]]] = {}
    task = progress.add_task("accuracy runs", total=repeats * len(schedules))
    for _ in range(repeats):
        for schedule in schedules:
            summary, _, _ = bench.run(schedule.config(bench.cfg, rounds=rounds))
            final = summary["final"]
            out.setdefault(schedule, []).append(
                {t: final.get(t, {}).get(primary_metric(t), float("nan")) for t in bench.cfg.tasks}
            )
            progress.advance(task)
    return out


def _base_config(args: argparse.Namespace) -> FederationConfig:
    return FederationConfig(
        model=model_preset("tiny"),
        optim=OptimConfig(lr=1e-3, batch_size=args.batch),
        data=DataConfig(train_size=args.train_size, val_size=args.val_size),
        tasks=["classification", "segmentation", "detection"],
        clients=args.clients,
        partition="iid",
        rounds=args.rounds,
        local_steps=args.steps,
        degrade="none",
        restore="none",
        seed=0,
        # Every round trains the body and averages heads/tails; the loaded CPU is slow.
        schedule=ScheduleConfig(warmup_rounds=args.rounds, finetune_rounds=0),
        step_deadline_s=300,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=480)
    parser.add_argument("--val-size", type=int, default=150)
    parser.add_argument("--rtts", default="0,20,80", help="ms; 0 = loopback, no proxy")
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--depths", default="4,8", help="pipeline depths K > 1 (async)")
    parser.add_argument("--wires", default="fp32,int8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="rounds for the accuracy effect")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-round-time", action="store_true", help="accuracy section only")
    parser.add_argument(
        "--body-lr",
        default="constant,linear",
        help="pipeline_body_lr rules compared at K > 1 in the accuracy section (constant, "
        "sqrt, linear); round times use the config default",
    )
    parser.add_argument("--accuracy-repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    machine = machine_line()
    cfg = _base_config(args)
    rtts = [float(x) for x in args.rtts.split(",")]
    wires = args.wires.split(",")
    default_rule = FederationConfig.model_fields["pipeline_body_lr"].default
    depths = [int(k) for k in args.depths.split(",")]
    schedules = [Schedule("sync", 1), Schedule("async", 1)] + [
        Schedule("async", k, default_rule) for k in depths
    ]
    acc_schedules = [Schedule("sync", 1), Schedule("async", 1)] + [
        Schedule("async", k, rule) for k in depths for rule in args.body_lr.split(",")
    ]
    console = Console()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-wan-") as work,
        Progress(console=Console(stderr=True)) as progress,
    ):
        bench = Bench(cfg, Path(work))
        times = (
            {}
            if args.skip_round_time
            else bench_round_time(
                bench, schedules, wires, rtts, args.rate_mbit, args.repeats, progress
            )
        )
        accuracy = (
            {}
            if args.skip_accuracy
            else bench_accuracy(bench, acc_schedules, args.rounds, args.accuracy_repeats, progress)
        )
    rows, notes = _rows(times, rtts, args.rate_mbit)
    command = "python -m festa.simulations.bench_wan" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    explain = (
        f"{cfg.clients} sites (one per task), tiny preset ({cfg.model.image_size} px, "
        f"{cfg.model.num_tokens} tokens x {cfg.model.embed_dim}, depth {cfg.model.depth}), "
        f"{cfg.local_steps} local steps of batch {cfg.optim.batch_size}, torch 1 thread; every "
        f"site behind its own user-space link (simulations/netem.py) of the given RTT and "
        f"{args.rate_mbit:g} Mbit/s each way, or loopback (RTT 0). round s = median of "
        f"{args.repeats} of the split-training part of a round (release of all site threads -> "
        "last site done and its stream closed, connection set-up included). 'vs own loopback' "
        "divides by the same schedule and wire at RTT 0; 'vs sync K=1 loopback' by today's "
        "default schedule at RTT 0 with the same wire. link use = the busier direction's bytes "
        "/ (round s x rate), per site."
    )
    columns = [
        "wire",
        "RTT ms",
        "schedule",
        "round s",
        "vs own loopback",
        "vs sync K=1 loopback",
        "MiB/site up",
        "MiB/site down",
        "link use %",
    ]
    if times:
        _report(
            args,
            "WAN round time with pipelined micro-batches",
            command,
            columns,
            rows,
            explain + "\n\n" + notes,
            machine,
            console,
        )
    if accuracy:
        acc_rows = [
            [
                s.name,
                *(_spread([run.get(t, float("nan")) for run in accuracy[s]]) for t in cfg.tasks),
            ]
            for s in acc_schedules
        ]
        acc_notes = (
            f"{args.rounds} rounds of the schedule over loopback (same sites, batches and initial "
            "weights; body trains every round, heads/tails averaged per task after each round); "
            "validation primary metric per task ("
            + ", ".join(f"{t}: {primary_metric(t)}" for t in cfg.tasks)
            + f") on {args.val_size} phantom images split among the sites; mean (min-max) of "
            f"{args.accuracy_repeats} repeats, which differ only by the async interleaving. "
            "body lr x1 / /sqrt K / /K: `pipeline_body_lr` constant / sqrt / linear (the body's "
            "learning rate during a pipelined round; head and tail keep theirs)."
        )
        _report(
            args,
            "WAN pipelining: accuracy effect",
            command,
            ["schedule", *cfg.tasks],
            acc_rows,
            acc_notes,
            machine,
            console,
        )
    console.print(f"done in {time.perf_counter() - started:.0f} s")


def _spread(values: list[float]) -> str:
    """ "mean (min-max)" of the repeats, or the value alone for one repeat."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _rows(
    times: dict[tuple[str, float, Schedule], list[Measured]], rtts: list[float], rate_mbit: float
) -> tuple[list[list[Any]], str]:
    def median(key: tuple[str, float, Schedule]) -> float:
        return statistics.median(m.seconds for m in times[key])

    rows = []
    best: dict[str, tuple[float, str]] = {}
    for wire, rtt, schedule in times:
        seconds = median((wire, rtt, schedule))
        own = seconds / median((wire, 0.0, schedule)) if 0.0 in rtts else float("nan")
        base = seconds / median((wire, 0.0, Schedule("sync", 1))) if 0.0 in rtts else float("nan")
        last = times[(wire, rtt, schedule)][-1]
        use = max(last.bytes_up, last.bytes_down) * 8 / (seconds * rate_mbit * 1e6)
        rows.append(
            [
                wire,
                f"{rtt:g}",
                schedule.name,
                seconds,
                f"{own:.2f}",
                f"{base:.2f}",
                f"{last.bytes_up / 2**20:.1f}",
                f"{last.bytes_down / 2**20:.1f}",
                f"{100 * use:.0f}" if rtt > 0 else "-",
            ]
        )
        if rtt == max(rtts) and (wire not in best or base < best[wire][0]):
            best[wire] = (base, schedule.name)
    notes = " ".join(
        f"At {max(rtts):g} ms, {wire}: fastest schedule {name} at {ratio:.2f}x the sync K=1 "
        "loopback round."
        for wire, (ratio, name) in best.items()
    )
    return rows, notes


def _report(
    args: argparse.Namespace,
    title: str,
    command: str,
    columns: list[str],
    rows: list[list[Any]],
    notes: str,
    machine: str,
    console: Console,
) -> None:
    """Print the table and (unless --no-write) append it to BENCHMARKS.md."""
    publish(
        title,
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
