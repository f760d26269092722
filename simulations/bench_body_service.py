"""Body-service round-trip throughput and traffic per wire dtype, against the in-process body.

Each measured step is what a client does per batch: forward(tokens) -> body output,
backward(grad) -> token gradient, with one AdamW step on the body (train_body=True). The
remote rows go through a real gRPC body service on loopback (sync mode), one service per wire
dtype, stepped round-robin with the local path so that load from other processes on a shared
machine hits every path alike; "sync x3" then runs three clients in threads whose batches the
service concatenates (its "vs local" compares with the interleaved local median). Prints a rich table and appends a
section to BENCHMARKS.md with the machine.

    python -m festa.simulations.bench_body_service            # tiny preset, ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from festa.client.body_client import RemoteBodyLink
from festa.server.body_service import BodyService, issue_token
from festa.shared.config import ModelConfig, model_preset
from festa.shared.model.body import Body
from festa.shared.model.split import LocalBodyLink
from festa.shared.runinfo import cpu_model
from festa.shared.wire import WIRE_DTYPES, decode, encode

SECRET = b"bench-secret"
RUN_ID = "bench"


@dataclass
class Row:
    name: str
    wire: str
    clients: int
    steps: int
    step_s: float  # median seconds per step (the slowest client's median in sync x3)
    tokens_per_step: int  # all clients together
    bytes_per_step: float  # per client, both directions
    codec_s: float = 0.0  # best seconds to encode + decode the step's four tensors

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s


class _LocalStepper:
    """The same step in process: the body and AdamW without the wire."""

    def __init__(self, body: Body):
        self.link = LocalBodyLink(body)
        self.optimizer = torch.optim.AdamW(body.parameters(), lr=1e-4)
        self.traffic = 0

    def step(self, tokens: torch.Tensor, grad: torch.Tensor) -> None:
        self.link.forward(tokens)
        self.link.backward(grad)
        self.optimizer.step()
        self.optimizer.zero_grad()


class _RemoteStepper:
    """One client of its own body service (sync mode, one participant) over loopback."""

    def __init__(self, body: Body, config: ModelConfig, wire: str, stack: contextlib.ExitStack):
        service = stack.enter_context(
            BodyService(copy.deepcopy(body), config, secret=SECRET, lr=1e-4, run_id=RUN_ID)
        )
        port = service.start("127.0.0.1", 0)
        service.open_round(0, {"site": "cls"}, train_body=True, step_deadline_s=60)
        token = issue_token(SECRET, RUN_ID, 0, "site", "cls", ttl_s=3600)
        self.link = stack.enter_context(RemoteBodyLink(f"127.0.0.1:{port}", token, wire_dtype=wire))

    @property
    def traffic(self) -> int:
        return self.link.bytes_sent + self.link.bytes_received

    def step(self, tokens: torch.Tensor, grad: torch.Tensor) -> None:
        self.link.forward(tokens)
        self.link.backward(grad)


def bench_interleaved(
    body: Body, config: ModelConfig, batch: int, steps: int, warmup: int, progress: Progress
) -> list[Row]:
    """Local and one remote client per wire dtype, stepped round-robin (rotating order) so that
    load from other processes on a shared machine hits every path alike."""
    tokens, grad = random_inputs(config, batch, seed=0)
    with contextlib.ExitStack() as stack:
        names = [("local (in-process)", "-")] + [("remote", w) for w in WIRE_DTYPES]
        steppers = [_LocalStepper(copy.deepcopy(body))] + [
            _RemoteStepper(body, config, w, stack) for w in WIRE_DTYPES
        ]
        times: list[list[float]] = [[] for _ in steppers]
        traffic_before = [0] * len(steppers)
        task = progress.add_task("local + remote per dtype", total=warmup + steps)
        for i in range(warmup + steps):
            if i == warmup:
                traffic_before = [s.traffic for s in steppers]
            for k in range(len(steppers)):
                j = (i + k) % len(steppers)
                start = time.perf_counter()
                steppers[j].step(tokens, grad)
                if i >= warmup:
                    times[j].append(time.perf_counter() - start)
            progress.advance(task)
        return [
            Row(
                name,
                wire,
                1,
                steps,
                statistics.median(times[j]),
                batch * config.num_tokens,
                (steppers[j].traffic - traffic_before[j]) / steps,
            )
            for j, (name, wire) in enumerate(names)
        ]


@dataclass
class ClientRun:
    """What `drive_clients` measured: per-client median step time and traffic, and the wall
    time of the measured steps of all clients together."""

    step_s: dict[str, float]  # node -> median seconds per forward + backward
    traffic: dict[str, int]  # node -> bytes both ways during the measured steps
    wall_s: float  # first measured step of any client to the last one's end


def drive_clients(
    target: str,
    nodes: list[str],
    config: ModelConfig,
    batch: int,
    steps: int,
    warmup: int,
    wire: str = "fp32",
    on_start: Callable[[], None] | None = None,
) -> ClientRun:
    """One thread per node runs `warmup` then `steps` forward+backward steps with random tokens
    `[batch, N, D]` against the body service at `target` (round 0, tokens signed with SECRET).
    `on_start` is called once, when the measured steps begin."""
    marks: list[float] = []  # when the barrier released the measured steps

    def start() -> None:
        if on_start is not None:
            on_start()
        marks.append(time.perf_counter())

    barrier = threading.Barrier(len(nodes), action=start)
    per_client: dict[str, tuple[float, int]] = {}
    errors: list[BaseException] = []

    def client(node: str, seed: int) -> None:
        try:
            tokens, grad = random_inputs(config, batch, seed)
            token = issue_token(SECRET, RUN_ID, 0, node, "cls", ttl_s=3600)
            with RemoteBodyLink(target, token, wire_dtype=wire) as link:
                for _ in range(warmup):
                    link.forward(tokens)
                    link.backward(grad)
                barrier.wait()
                before = link.bytes_sent + link.bytes_received
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    link.forward(tokens)
                    link.backward(grad)
                    times.append(time.perf_counter() - start)
                traffic = link.bytes_sent + link.bytes_received - before
                per_client[node] = (statistics.median(times), traffic)
        except BaseException as exc:  # reported by the caller; a broken barrier frees the rest
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(n, i)) for i, n in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = time.perf_counter()
    if errors or len(per_client) != len(nodes):
        raise RuntimeError(f"benchmark clients failed: {errors[:1] or 'missing results'}")
    return ClientRun(
        {n: s for n, (s, _) in per_client.items()},
        {n: b for n, (_, b) in per_client.items()},
        end - marks[0],
    )


def bench_sync_clients(
    body: Body,
    config: ModelConfig,
    wire: str,
    clients: int,
    batch: int,
    steps: int,
    warmup: int,
) -> Row:
    """`clients` threads in one sync round: each step is one body step on their concatenation."""
    nodes = [f"site-{i}" for i in range(clients)]
    with BodyService(copy.deepcopy(body), config, secret=SECRET, lr=1e-4, run_id=RUN_ID) as svc:
        port = svc.start("127.0.0.1", 0)
        svc.open_round(0, {n: "cls" for n in nodes}, train_body=True, step_deadline_s=60)
        run = drive_clients(f"127.0.0.1:{port}", nodes, config, batch, steps, warmup, wire)
        report = svc.close_round()
    if report.dropped:
        raise RuntimeError(f"benchmark clients dropped: {report.dropped}")
    step_s = max(run.step_s.values())
    traffic = sum(run.traffic.values()) / clients / steps
    return Row(
        f"remote, sync x{clients}",
        wire,
        clients,
        steps,
        step_s,
        clients * batch * config.num_tokens,
        traffic,
    )


def codec_seconds(config: ModelConfig, batch: int, wire: str, repeats: int) -> float:
    """Best-of-`repeats` time of the wire work in one step: 4 tensors encoded and decoded (no
    gRPC); the minimum, because on a shared machine the median mostly measures other load."""
    tokens, _ = random_inputs(config, batch, seed=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            decode(encode(tokens, wire))
        times.append(time.perf_counter() - start)
    return min(times)


def _in_worker_thread(fn: Any, *args: Any) -> Any:
    """Run `fn` in a fresh thread, as the service runs the body. torch's intra-op threading in
    the main thread can be ~2x slower on a loaded machine (measured here: 418 vs 195 ms per
    step with 2 threads), which would flatter the remote rows."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)))
    worker.start()
    worker.join()
    if not result:
        raise RuntimeError(f"{fn.__name__} failed in its worker thread (see the traceback above)")
    return result[0]


def random_inputs(config: ModelConfig, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens `[batch, N, D]` and a small random gradient of the same shape."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_tokens, config.embed_dim)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen) * 1e-3


def _table(rows: list[Row], local: Row, config: ModelConfig, batch: int) -> Table:
    table = Table(
        title=f"body service round trip (forward + backward + AdamW), "
        f"{config.image_size}px/{config.patch_size} dim {config.embed_dim} depth {config.depth}, "
        f"batch {batch} x {config.num_tokens} tokens"
    )
    columns = ["path", "wire", "steps", "ms/step", "codec ms", "tokens/s", "vs local", "KiB/step"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("path", "wire") else "right")
    for row in rows:
        table.add_row(
            row.name,
            row.wire,
            str(row.steps * row.clients),
            f"{row.step_s * 1000:,.0f}",
            f"{row.codec_s * 1000:,.1f}" if row.codec_s else "-",
            f"{row.tokens_per_s:,.0f}",
            f"{row.tokens_per_s / local.tokens_per_s:.2f}",
            f"{row.bytes_per_step / 1024:,.1f}" if row.bytes_per_step else "-",
        )
    return table


def _markdown(rows: list[Row], local: Row, config: ModelConfig, args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Body service round trip ({now})",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores visible, torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}, grpcio {grpc.__version__}, "
        f"Python {platform.python_version()}.",
        f"Command: `python -m festa.simulations.bench_body_service --batch {args.batch} "
        f"--steps {args.steps} --warmup {args.warmup} --threads {args.threads}`. "
        f"Model: image {config.image_size}, patch {config.patch_size}, dim {config.embed_dim}, "
        f"depth {config.depth} ({config.num_tokens} tokens); batch {args.batch} per client; "
        "each step = forward + backward + one AdamW step on the body; loopback gRPC, sync mode. "
        "Throughput = tokens per step / median step time (robust to a shared, loaded machine; "
        f"1-min load average at start {args.load_at_start:.1f}). KiB/step/client counts both "
        "directions: tokens and gradient up, body output and token gradient down. codec ms/step: "
        "encode + decode of those four tensors alone (no gRPC), best of the steps.",
        "",
        "| path | wire | steps | median ms/step | codec ms/step | tokens/s | vs local "
        "| KiB/step/client |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        traffic = f"{row.bytes_per_step / 1024:,.1f}" if row.bytes_per_step else "-"
        codec = f"{row.codec_s * 1000:,.1f}" if row.codec_s else "-"
        lines.append(
            f"| {row.name} | {row.wire} | {row.steps * row.clients} | {row.step_s * 1000:,.0f} | "
            f"{codec} | {row.tokens_per_s:,.0f} | "
            f"{row.tokens_per_s / local.tokens_per_s:.2f} | {traffic} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = model_preset("tiny")
    body = Body(config)

    with Progress(console=Console(stderr=True)) as progress:
        rows = _in_worker_thread(
            bench_interleaved, body, config, args.batch, args.steps, args.warmup, progress
        )
        sync_task = progress.add_task("sync x3 clients", total=1)
        rows.append(
            bench_sync_clients(body, config, "fp32", 3, args.batch, args.steps, args.warmup)
        )
        progress.advance(sync_task)
    for row in rows:
        if row.wire != "-":
            row.codec_s = codec_seconds(config, args.batch, row.wire, args.steps)
    local = rows[0]
    Console().print(_table(rows, local, config, args.batch))
    if not args.no_write:
        with args.out.open("a") as handle:
            handle.write(_markdown(rows, local, config, args))
        Console().print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
