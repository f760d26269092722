"""Scaling (issue 8): round time, body-service throughput and server memory as clients and
model size grow.

    python -m festa.simulations.bench_scaling                      # everything, ~15 min on 2 CPU cores
    python -m festa.simulations.bench_scaling --skip rounds        # no `festa simulate` runs
    python -m festa.simulations.bench_scaling --device cuda --skip clients,rounds   # GPU body service

Three measurements:

- **round time**: a real `festa simulate` (Flower simulation engine + gRPC body service) per
  client count and step mode; the mean `seconds` of the rounds after the first (rounds.jsonl).
- **body-service throughput and server memory**: a real `BodyService` in its own process (so
  its resident memory is the server's alone), N client threads driving it over loopback gRPC
  with `RemoteBodyLink` (random tokens of the model's shape; forward + backward + AdamW).
  tokens/s = tokens through the body (forward + backward counted once) per second of wall
  time of the measured steps; warm-up steps are excluded.
- **achieved FLOP/s vs matmul peak**: tokens/s x `body_flops_per_token` against the best rate of
  a large square `torch.matmul` loop measured by this script on the same device, with the same
  thread count and dtype the body runs in (fp32 on CPU; bf16 on CUDA, where the service uses
  bf16 autocast).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from festa.shared.config import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    model_preset,
)
from festa.simulations.bench_body_service import RUN_ID, SECRET, drive_clients, random_inputs
from festa.simulations.benchmark_table import machine_line, publish

MB = 1024 * 1024
# The sizes of the model-scaling sweep: the two presets and a ViT-S/16-sized body between them.
MODEL_SIZES: dict[str, ModelConfig] = {
    "tiny": model_preset("tiny"),
    "small": model_preset("base", embed_dim=384, num_heads=6),
    "base": model_preset("base"),
}


def body_flops_per_token(config: ModelConfig, training: bool = True) -> float:
    """Matmul FLOPs the body spends on one token (1 multiply-add = 2 FLOPs).

    Per block and token, with D = embed_dim, H = int(D * mlp_ratio), N = tokens per image:
    linear layers 2 * (3D*D + D*D + 2*D*H) (qkv, proj, fc1, fc2) plus attention 4*N*D
    (q k^T and attn v over all heads). Training (forward + backward w.r.t. inputs and weights)
    is 3x the forward. LayerNorm, softmax, GELU, biases and the AdamW update are not counted.
    """
    d = config.embed_dim
    hidden = int(d * config.mlp_ratio)
    per_block = 2 * (4 * d * d + 2 * d * hidden) + 4 * config.num_tokens * d
    forward = config.depth * per_block
    return float(3 * forward if training else forward)


def matmul_peak(
    device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 0, seconds: float = 2.0
) -> float:
    """Best FLOP/s of `size` x `size` matmuls in `dtype` on `device` over ~`seconds` of repeats.

    On CPU the rate is per second of this thread's CPU time (what one core delivers while it
    runs, so other processes on a shared machine do not lower it); on CUDA per second of wall
    time after synchronizing. The best repeat, not the mean, is the peak."""
    dev = torch.device(device)
    size = size or (8192 if dev.type == "cuda" else 1024)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dev, dtype)
    b = torch.randn(size, size, generator=gen).to(dev, dtype)
    inner = 20 if dev.type == "cuda" else 1

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    clock = time.perf_counter if dev.type == "cuda" else time.thread_time

    torch.matmul(a, b)  # warm-up (kernel selection, allocator)
    sync()
    best, deadline, repeats = 0.0, time.perf_counter() + seconds, 0
    while repeats < 3 or time.perf_counter() < deadline:
        start = clock()
        for _ in range(inner):
            torch.matmul(a, b)
        sync()
        best = max(best, 2 * size**3 * inner / max(clock() - start, 1e-9))
        repeats += 1
    return best


# ---- the body service in its own process ---------------------------------------------------


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    """User + system CPU seconds this process has used (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: VmHWM on Linux.

    Not ru_maxrss: Linux carries the pre-exec address space's high-water mark into it, so a
    spawned child reports its parent's resident size (measured: 835 MB for a 15 MB child).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def _serve(conn: Any, config_json: str, nodes: list[str], mode: str, device: str, threads: int):
    """Child process: a BodyService with one open round for `nodes`; reports its port, then
    (when told) closes the round and reports its memory and round report."""
    from festa.server.body_service import BodyService
    from festa.shared.model.body import Body

    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        config = ModelConfig.model_validate_json(config_json)
        cuda = device.startswith("cuda")
        service = BodyService(
            Body(config),
            config,
            secret=SECRET,
            lr=1e-4,
            device=device,
            autocast_bf16=cuda,
            max_batch=4096,
            max_message_bytes=512 * MB,
            run_id=RUN_ID,
        )
        with service:
            port = service.start("127.0.0.1", 0)
            service.open_round(
                0, {n: "cls" for n in nodes}, train_body=True, mode=mode, step_deadline_s=900
            )
            conn.send({"port": port, "rss_idle": _rss_bytes()})
            conn.recv()  # the measured steps start
            cpu_start = _cpu_seconds()
            conn.recv()  # the clients are done
            cpu_s = _cpu_seconds() - cpu_start
            report = service.close_round()
            result = {
                "cpu_s": cpu_s,
                "peak_rss": _peak_rss_bytes(),
                "dropped": report.dropped,
                "steps": report.steps,
                "tokens": report.tokens_processed,
                "cuda_peak": torch.cuda.max_memory_allocated() if cuda else 0,
            }
        conn.send(result)
    except BaseException as exc:  # the parent raises it with the child's message
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


@dataclass
class Throughput:
    """One body-service measurement."""

    clients: int
    mode: str
    batch: int  # per client and step
    steps: int  # measured steps per client
    tokens: int  # tokens through the body during the measured steps (all clients)
    wall_s: float
    cpu_s: float  # server CPU seconds (all threads) during the measured steps
    rss_idle: int  # server bytes resident with the body loaded and the service listening
    rss_peak: int  # server peak resident bytes over the whole run
    cuda_peak: int  # server peak CUDA bytes allocated (0 on CPU)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def body_throughput(
    config: ModelConfig,
    clients: int,
    mode: str,
    batch: int,
    steps: int,
    warmup: int = 1,
    device: str = "cpu",
    threads: int = 1,
) -> Throughput:
    """Run a body service in a fresh process and `clients` client threads against it
    (tokens `[batch, N, D]` per client and step); returns throughput and server memory."""
    nodes = [f"site-{i:02d}" for i in range(clients)]
    ctx = mp.get_context("spawn")  # a clean process: no inherited torch threads or gRPC state
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_serve, args=(child, config.model_dump_json(), nodes, mode, device, threads)
    )
    proc.start()
    try:
        ready = _receive(parent, proc, timeout_s=300)
        run = drive_clients(
            f"127.0.0.1:{ready['port']}",
            nodes,
            config,
            batch,
            steps,
            warmup,
            wire="fp32",
            on_start=lambda: parent.send("start"),
        )
        parent.send("close")
        done = _receive(parent, proc, timeout_s=300)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if done["dropped"]:
        raise RuntimeError(f"body service dropped clients: {done['dropped']}")
    return Throughput(
        clients=clients,
        mode=mode,
        batch=batch,
        steps=steps,
        tokens=clients * steps * batch * config.num_tokens,
        wall_s=run.wall_s,
        cpu_s=done["cpu_s"],
        rss_idle=ready["rss_idle"],
        rss_peak=done["peak_rss"],
        cuda_peak=done["cuda_peak"],
    )


def _receive(conn: Any, proc: Any, timeout_s: float) -> dict[str, Any]:
    if not conn.poll(timeout_s):
        raise TimeoutError(f"the body service process sent nothing in {timeout_s:.0f} s")
    message = conn.recv()
    if "error" in message:
        raise RuntimeError(f"body service process failed: {message['error']}")
    return message


def engine_throughput(
    config: ModelConfig, batch: int, steps: int, device: str = "cpu", warmup: int = 1
) -> tuple[float, float]:
    """The body engine alone in this process (no gRPC, no codec): forward + backward + AdamW on
    random tokens `[batch, N, D]`. Returns tokens per wall second and per CPU second of this
    thread (the CPU figure is meaningful on CPU only)."""
    from festa.server.body_service.engine import BodyEngine
    from festa.shared.model.body import Body

    torch.manual_seed(0)
    engine = BodyEngine(
        Body(config),
        lr=1e-4,
        weight_decay=0.01,
        device=device,
        autocast_bf16=device.startswith("cuda"),
    )
    tokens, grad = random_inputs(config, batch, seed=0)
    wall = cpu = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.thread_time()
        state, _ = engine.forward(tokens)  # the output's copy to the CPU synchronizes
        engine.backward([state], [grad], optimizer_step=True)
    count = batch * config.num_tokens * steps
    return count / (time.perf_counter() - wall), count / (time.thread_time() - cpu)


# ---- round time from real simulations ------------------------------------------------------


def round_time(clients: int, mode: str, rounds: int, local_steps: int, work: Path) -> dict:
    """Mean seconds of rounds 2.. of a real `festa simulate` (tiny preset, 64 px phantoms,
    two tasks, IID, the body trains every round, no degradation or restoration)."""
    from festa.simulations.bench_federation import simulate

    cfg = FederationConfig(
        clients=clients,
        mode=mode,
        rounds=rounds,
        local_steps=local_steps,
        tasks=["classification", "segmentation"],
        partition="iid",
        degrade="none",
        restore="none",
        optim=OptimConfig(lr=1e-3, batch_size=8),
        data=DataConfig(train_size=20 * clients, val_size=32),
        schedule=ScheduleConfig(warmup_rounds=rounds, finetune_rounds=0),
    )
    summary = simulate(cfg, work / f"rounds-{clients}-{mode}")
    records = summary["rounds_records"]
    later = records[1:] or records
    return {
        "round_s": sum(r["seconds"] for r in later) / len(later),
        "train_s": sum(r["body"]["train_seconds"] for r in later) / len(later),
        "first_s": records[0]["seconds"],
        "wall_s": summary["wall_seconds"],
    }


# ---- the command ---------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=_ints, default=[2, 4, 8, 16])
    parser.add_argument("--modes", type=_words, default=["sync", "async"])
    parser.add_argument("--presets", type=_words, default=list(MODEL_SIZES))
    parser.add_argument("--skip", type=_words, default=[], help="any of: rounds, clients, models")
    parser.add_argument("--batch", type=int, default=16, help="per client, client sweep")
    parser.add_argument("--model-batch", type=int, default=2, help="per client, model sweep")
    parser.add_argument("--model-clients", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per client")
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per simulate run")
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="body service device: cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    parser.add_argument("--quick", action="store_true", help="2 and 4 clients, tiny, 2 steps")
    parser.add_argument("--work", type=Path, default=None, help="simulate runs (reused)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.presets, args.steps, args.model_steps = [2, 4], ["tiny"], 2, 2
    unknown = set(args.presets) - set(MODEL_SIZES)
    if unknown:
        parser.error(f"unknown preset(s) {sorted(unknown)}; choose from {list(MODEL_SIZES)}")
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="festa-scaling-"))
    command = "python -m festa.simulations.bench_scaling " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = machine_line()
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    console = Console(width=max(Console().width, 160))
    peak = matmul_peak(args.device, dtype)
    peak_text = (
        f"Matmul peak measured by the script: {peak / 1e9:,.1f} GFLOP/s ({args.device}, "
        f"{str(dtype).removeprefix('torch.')}, {args.threads} torch thread(s), best repeat of ~2 s "
        f"of {'8192' if cuda else '1024'}-square matmuls"
        + (")." if cuda else ", per second of the thread's CPU time).")
    )
    console.print(peak_text)
    notes_rates = (
        "tokens/s = all clients' tokens / wall seconds of the measured steps (warm-up excluded; "
        "forward + backward + AdamW counted once per token). GFLOP/s = tokens/s x body FLOPs per "
        "token (training) = 3 x depth x [2(4D^2 + 2DH) + 4ND] (D embed dim, H MLP width, N tokens "
        "per image; matmuls only, backward = 2 x forward). '% of peak (wall)' divides GFLOP/s by "
        "the matmul peak"
        + (
            "."
            if cuda
            else "; '% of peak per CPU-s' divides the body FLOPs by the server process's CPU "
            "seconds (all its threads, gRPC included) first, which removes the time the server "
            "waited for a core on this shared machine."
        )
        + f" {peak_text} Server RSS = peak resident memory of the service process (VmHWM); "
        "idle = after loading the body and listening, before any client."
    )
    rate_columns = ["tokens/s", "GFLOP/s", "% of peak (wall)", "% of peak per CPU-s"]

    def rates(tp: Throughput, config: ModelConfig) -> list[object]:
        flops = body_flops_per_token(config) * tp.tokens
        per_cpu = "-" if cuda else 100 * flops / max(tp.cpu_s, 1e-9) / peak
        return [tp.tokens_per_s, flops / tp.wall_s / 1e9, 100 * flops / tp.wall_s / peak, per_cpu]

    write = not args.no_write
    with Progress(console=Console(stderr=True)) as progress:
        if not {"clients", "rounds"} <= set(args.skip):
            sweep = [(n, m) for n in args.clients for m in args.modes]
            task = progress.add_task("client sweep", total=len(sweep))
            tiny = MODEL_SIZES["tiny"]
            rows: list[list[object]] = []
            for n, mode in sweep:
                row: list[object] = [n, mode]
                if "rounds" in args.skip:
                    row += ["-", "-"]
                else:
                    rt = round_time(n, mode, args.rounds, args.local_steps, work)
                    row += [rt["round_s"], rt["train_s"]]
                if "clients" in args.skip:
                    row += ["-"] * (len(rate_columns) + 2)
                else:
                    tp = body_throughput(
                        tiny, n, mode, args.batch, args.steps, 1, args.device, args.threads
                    )
                    row += rates(tp, tiny)
                    row += [tp.rss_peak / MB, (tp.rss_peak - tp.rss_idle) / MB / n]
                rows.append(row)
                progress.advance(task)
            publish(
                "Scaling with clients: round time, body throughput, server memory",
                command,
                [
                    "clients",
                    "mode",
                    "round s",
                    "body train s/round",
                    *rate_columns,
                    "server peak RSS MB",
                    "RSS above idle per client MB",
                ],
                rows,
                notes=(
                    "Round time: `festa simulate`, tiny preset (64 px phantoms, dim 128, depth 4), "
                    f"2 tasks, IID, batch 8, {args.local_steps} local steps, {args.rounds} rounds "
                    "with the body training every round; round s = mean wall seconds of the rounds "
                    "after the first (training + evaluation + FedAvg), body train s = the body "
                    "service's training phase of those rounds. Every virtual client runs at once "
                    "(Ray: cores/clients CPUs each; Flower's engine: one worker thread per client). "
                    f"Body throughput: one BodyService process on {args.device} ({args.threads} "
                    "torch thread(s)), N client threads over loopback gRPC (fp32 wire), batch "
                    f"{args.batch} x 64 tokens per client, {args.steps} measured steps after 1 "
                    f"warm-up. {notes_rates}"
                ),
                machine=machine,
                console=console,
                write=write,
            )
        if "models" not in args.skip:
            task = progress.add_task("model sweep", total=len(args.presets))
            rows = []
            for name in args.presets:
                config = MODEL_SIZES[name]
                tp = body_throughput(
                    config,
                    args.model_clients,
                    "sync",
                    args.model_batch,
                    args.model_steps,
                    1,
                    args.device,
                    args.threads,
                )
                engine_wall, engine_cpu = engine_throughput(
                    config,
                    args.model_clients * args.model_batch,
                    args.model_steps,
                    args.device,
                )
                engine_rate = engine_wall if cuda else engine_cpu
                flops = body_flops_per_token(config)
                rows.append(
                    [
                        name,
                        f"{config.embed_dim} x {config.depth}",
                        config.num_tokens,
                        _body_params(config) / 1e6,
                        body_flops_per_token(config) / 1e6,
                        *rates(tp, config),
                        engine_wall,
                        100 * engine_rate * flops / peak,
                        tp.rss_peak / MB,
                        tp.cuda_peak / MB if cuda else "-",
                    ]
                )
                progress.advance(task)
            publish(
                f"Scaling with model size: body service on {args.device}",
                command,
                [
                    "body",
                    "D x depth",
                    "tokens/image",
                    "params M",
                    "MFLOP/token (train)",
                    *rate_columns,
                    "engine alone tokens/s",
                    "engine alone % of peak",
                    "server peak RSS MB",
                    "peak CUDA MB",
                ],
                rows,
                notes=(
                    f"{args.model_clients} clients, sync, batch {args.model_batch} per client, "
                    f"{args.model_steps} measured steps after 1 warm-up; body service on "
                    f"{args.device} ({args.threads} torch thread(s)"
                    + (", bf16 autocast" if cuda else ", fp32")
                    + "). 'small' is a ViT-S/16-sized body (D 384, 6 heads) between the presets. "
                    "'engine alone' runs the service's BodyEngine in the benchmark process on the "
                    "same concatenated batch without gRPC or the wire codec"
                    + (
                        " (% of peak from wall time). "
                        if cuda
                        else " (tokens/s from wall time; % of peak per CPU-second of its thread). "
                    )
                    + notes_rates
                ),
                machine=machine,
                console=console,
                write=write,
            )
    console.print(f"work folder: {work}")


def _body_params(config: ModelConfig) -> int:
    from festa.shared.model.body import Body

    return sum(p.numel() for p in Body(config).parameters())


if __name__ == "__main__":
    main()
