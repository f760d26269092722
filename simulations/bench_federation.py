"""Benchmarks of the federation (issue 3): traffic per wire dtype, split overhead, accuracy.

    python -m festa.simulations.bench_federation [--rounds 6] [--skip traffic,overhead,accuracy]

Each festa number comes from a real `festa simulate` (Flower simulation engine + gRPC body
service) in a subprocess; baselines (centralized, local-only, plain FedAvg) use the same
partition, batch size, local steps and rounds (`festa.simulations.baselines`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from festa.shared.config import CentralConfig, DataConfig, FederationConfig, ScheduleConfig
from festa.shared.tasks import primary_metric
from festa.simulations.benchmark_table import machine_line, publish

REPO = Path(__file__).resolve().parents[1]


def simulate(cfg: FederationConfig, out: Path) -> dict:
    """Run `festa simulate` on `cfg` in a subprocess; return its summary and round records."""
    config_path = out.parent / f"{out.name}.json"
    if (
        (out / "summary.json").exists()
        and config_path.exists()
        and config_path.read_text() == cfg.model_dump_json()
    ):
        return _load(out)  # the same run finished earlier in this work folder
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config_path.write_text(cfg.model_dump_json())
    toml = out.parent / f"{out.name}.toml"
    toml.write_text(_to_toml(cfg.model_dump()))
    cmd = [
        sys.executable,
        "-m",
        "festa.shared.cli",
        "simulate",
        "--config",
        str(toml),
        "--out",
        str(out),
        "--store",
        str(out.parent / "bench.db"),
    ]
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    if result.returncode != 0:
        raise RuntimeError(f"simulate failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return _load(out)


def _load(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary["rounds_records"] = [
        json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()
    ]
    return summary


def _to_toml(data: dict, prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(_to_toml(value, f"{prefix}{key}."))
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "\n".join(scalars) + "\n\n" + "".join(tables)


def primary(metrics: dict[str, dict[str, float]], task: str) -> float:
    return metrics.get(task, {}).get(primary_metric(task), float("nan"))


def bench_traffic(base: FederationConfig, work: Path) -> list[list]:
    rows = []
    variants = [
        ("fp32", False),
        ("fp16", False),
        ("bf16", False),
        ("int8", False),
        ("fp32", True),
        ("int8", True),
    ]
    fedavg_bytes = None
    for wire, permute in variants:
        cfg = base.model_copy(update={"wire": wire, "permute": permute})
        s = simulate(cfg, work / f"traffic-{wire}-{'perm' if permute else 'plain'}")
        per_client = [b for rnd in s["bytes_per_client_per_round"] for b in rnd.values()]
        mean_bytes = sum(per_client) / len(per_client)
        rows.append(
            [
                f"festa {wire}" + (" + permute" if permute else ""),
                mean_bytes / 1e6,
                *(primary(s["final"], t) for t in base.tasks),
                s["wall_seconds"],
            ]
        )
        if fedavg_bytes is None:
            from festa.simulations.baselines import run_baseline

            fed = run_baseline(base, "fedavg")
            fedavg_bytes = fed["bytes_per_client_round"]
            fedavg_row = [
                "plain FedAvg (whole model, fp32)",
                fedavg_bytes / 1e6,
                *(primary(fed["final"], t) for t in base.tasks),
                "-",
            ]
    rows.append(fedavg_row)
    return rows


def bench_overhead(base: FederationConfig, work: Path, threads: int) -> list[list]:
    """Training throughput through Flower + gRPC body service vs the centralized trainer."""
    cfg = base.model_copy(
        update={
            "clients": 3,
            "rounds": 2,
            "local_steps": 30,
            "partition": "iid",
            "schedule": ScheduleConfig(warmup_rounds=2, finetune_rounds=0),
        }
    )
    s = simulate(cfg, work / "overhead")
    examples = sum(c["examples_seen"] for r in s["rounds_records"] for c in r["clients"].values())
    train_s = sum(r["body"]["train_seconds"] for r in s["rounds_records"])
    fed_rate = examples / train_s
    from rich.console import Console

    from festa.shared.train.central import train_central

    torch.set_num_threads(threads)
    pooled = examples // len(cfg.tasks)  # same number of training examples per task
    central = train_central(
        CentralConfig(
            model=cfg.model,
            optim=cfg.optim,
            tasks=cfg.tasks,
            epochs=1,
            seed=cfg.seed,
            data=DataConfig(train_size=max(pooled, 64), val_size=64),
        ),
        work / "overhead-central",
        console=Console(quiet=True),
    )
    central_rate = central["train_samples_per_second"]
    return [
        [
            "festa (3 clients, Flower sim + loopback body service, sync)",
            examples,
            train_s,
            fed_rate,
            fed_rate / central_rate,
        ],
        [
            f"centralized trainer (1 process, {threads} threads)",
            central["train_size"],
            central["train_seconds"],
            central_rate,
            1.0,
        ],
    ]


def bench_accuracy(base: FederationConfig, work: Path, festa_summary: dict | None) -> list[list]:
    from rich.console import Console

    from festa.shared.train.central import train_central
    from festa.simulations.baselines import run_baseline

    rows = []
    if festa_summary is None:
        festa_summary = simulate(base, work / "accuracy-festa")
    rows.append(["festa (sync, fp32)", *(primary(festa_summary["final"], t) for t in base.tasks)])
    # Centralized: the pooled training set, about the same number of examples seen per task.
    steps_per_task = base.rounds * base.local_steps * (base.clients // len(base.tasks))
    epochs = max(1, round(steps_per_task * base.optim.batch_size / base.data.train_size))
    central = train_central(
        CentralConfig(
            model=base.model,
            optim=base.optim,
            tasks=base.tasks,
            epochs=epochs,
            seed=base.seed,
            data=base.data,
        ),
        work / "accuracy-central",
        console=Console(quiet=True),
    )
    rows.append(
        [
            f"centralized ({epochs} epochs on the pooled data)",
            *(central["primary"][t] for t in base.tasks),
        ]
    )
    for kind, label in (
        ("local", "local-only (mean over clients)"),
        ("fedavg", "plain FedAvg (whole model per task)"),
    ):
        result = run_baseline(base, kind)
        rows.append([label, *(primary(result["final"], t) for t in base.tasks)])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip", default="", help="comma-separated: traffic, overhead, accuracy")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the centralized trainer"
    )
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)  # the in-process baselines share the cores with simulations
    work = args.work or Path(tempfile.mkdtemp(prefix="festa-bench-"))
    base = FederationConfig(rounds=args.rounds, degrade="none", restore="none")
    command = "python -m festa.simulations.bench_federation " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = machine_line()
    festa_fp32 = None
    if "traffic" not in skip:
        rows = bench_traffic(base, work)
        festa_fp32 = simulate_summary(work / "traffic-fp32-plain")
        publish(
            "Federation traffic per wire dtype (festa simulate defaults, 6 clients, 3 tasks)",
            command,
            [
                "run",
                "MB per client per round",
                *(f"{t} {primary_metric(t)}" for t in base.tasks),
                "wall s",
            ],
            rows,
            notes=(
                "MB per client per round counts both directions of the split traffic during training "
                "(tokens and gradients as protobuf messages, measured by the body service). FedAvg moves the "
                "whole fp32 model (head + body + tail) down and up once per round. Metrics are the final "
                f"round's validation metrics after {base.rounds} rounds, Dirichlet(0.5) label skew."
            ),
            machine=machine,
        )
    if "overhead" not in skip:
        rows = bench_overhead(base, work, args.threads)
        publish(
            "Split overhead: federated training throughput vs centralized",
            command,
            ["path", "train examples", "train s", "examples/s", "ratio to central"],
            rows,
            notes=(
                "festa train seconds = the body service's wall time of the training phase of each round "
                "(first token to last gradient), so Ray start-up and evaluation are excluded. All processes "
                "share the same 2 CPU cores."
            ),
            machine=machine,
        )
    if "accuracy" not in skip:
        rows = bench_accuracy(base, work, festa_fp32)
        publish(
            "Accuracy: festa vs centralized vs local-only vs plain FedAvg (phantoms, non-IID)",
            command,
            ["method", *(f"{t} {primary_metric(t)}" for t in base.tasks)],
            rows,
            notes=(
                f"Same partition (Dirichlet 0.5 over 6 clients, 2 per task), batch {base.optim.batch_size}, "
                f"{base.local_steps} local steps x {base.rounds} rounds. Local-only and FedAvg report the mean "
                "of their clients' models on the shared phantom validation set."
            ),
            machine=machine,
        )
    print(f"work folder: {work}")


def simulate_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


if __name__ == "__main__":
    main()
