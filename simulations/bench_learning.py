"""Does the federation learn as well as the centralized trainer at the same budget?

Reads a finished `festa simulate` run, trains the centralized yardstick on the same phantom
images (all of them pooled, same model, lr and batch size) for the same number of examples
per task as the federation's clients saw, and reports per task: both final metrics, their
gap, and time-to-accuracy (the federation's wall time until its validation metric first
reached the centralized trainer's final one, over the centralized wall time).

    python -m festa.simulations.bench_learning --fed-run runs/<ts> [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from festa.shared.config import CentralConfig, FederationConfig, OptimConfig
from festa.shared.tasks import primary_metric
from festa.shared.train.central import train_central
from festa.simulations.benchmark_table import publish


def federation_record(run: Path) -> tuple[FederationConfig, list[dict[str, Any]], float]:
    """The run's config, its per-round records and its wall time (summary.json)."""
    cfg = FederationConfig.model_validate(json.loads((run / "config.json").read_text()))
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    wall = json.loads((run / "summary.json").read_text())["wall_seconds"]
    return cfg, rounds, wall


def examples_per_task(rounds: list[dict[str, Any]]) -> dict[str, int]:
    """Training examples each task's clients saw over the run, all rounds together."""
    seen: dict[str, int] = {}
    for record in rounds:
        for client in record["clients"].values():
            seen[client["task"]] = seen.get(client["task"], 0) + int(client["examples_seen"] or 0)
    return seen


def time_to_reach(rounds: list[dict[str, Any]], task: str, target: float) -> float | None:
    """Cumulative round seconds until `task`'s primary metric first reached `target`."""
    elapsed = 0.0
    for record in rounds:
        elapsed += record["seconds"]
        value = record["tasks"].get(task, {}).get(primary_metric(task))
        if value is not None and value >= target:
            return elapsed
    return None


def central_config(cfg: FederationConfig, epochs: int, seed: int) -> CentralConfig:
    """The centralized yardstick of federation `cfg`: same model, data, tasks, lr, batch size."""
    return CentralConfig(
        model=cfg.model,
        optim=OptimConfig(
            lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, batch_size=cfg.optim.batch_size
        ),
        data=cfg.data,
        tasks=list(cfg.tasks),
        epochs=epochs,
        seed=seed,
    )


def finished_central_run(folders: list[Path], wanted: CentralConfig) -> dict[str, Any]:
    """The summary of the `festa train-central` run among `folders` whose config is `wanted`
    (trained beforehand, e.g. while the federation ran); ValueError if none matches."""
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        if _comparable(summary["config"]) == _comparable(wanted.model_dump()):
            return summary
    raise ValueError(f"no central run in {[str(f) for f in folders]} has the config {wanted}")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # train-central fills in the class names it read from the data; the rest must agree.
    model = {k: v for k, v in config["model"].items() if not k.endswith("class_names")}
    return {**config, "model": model, "device": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fed-run", type=Path, required=True, help="a finished simulate run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="central seeds")
    parser.add_argument(
        "--central-run",
        type=Path,
        nargs="+",
        default=None,
        help="finished train-central folders to use instead of training (matched by config)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, rounds, fed_wall = federation_record(args.fed_run)
    seen = examples_per_task(rounds)
    train_images = cfg.data.train_size  # every phantom carries every task's labels
    epochs = max(1, math.ceil(max(seen.values()) / train_images))
    central_runs = []
    for seed in args.seeds:
        central_cfg = central_config(cfg, epochs, seed)
        if args.central_run:
            central_runs.append(finished_central_run(args.central_run, central_cfg))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            central_runs.append(train_central(central_cfg, tmp))
    central_wall = statistics.mean(r["wall_seconds"] for r in central_runs)
    rows = []
    for task in cfg.tasks:
        metric = primary_metric(task)
        central = [r["final"][task][metric] for r in central_runs]
        target = statistics.mean(central)
        fed = rounds[-1]["tasks"][task][metric]
        reached = time_to_reach(rounds, task, target)
        rows.append(
            [
                task,
                metric,
                seen[task],
                epochs * train_images,
                target,
                statistics.pstdev(central) if len(central) > 1 else "-",
                fed,
                fed - target,
                f"{reached:.0f}" if reached is not None else "not reached",
                f"{reached / central_wall:.2f}" if reached is not None else "-",
            ]
        )
        if task == "detection":
            lesion_c = statistics.mean(
                r["final"][task].get("ap_1", float("nan")) for r in central_runs
            )
            lesion_f = rounds[-1]["tasks"][task].get("ap_1", float("nan"))
            rows.append(
                [task, "lesion ap_1", "", "", lesion_c, "-", lesion_f, lesion_f - lesion_c, "", ""]
            )
    publish(
        "Federation vs centralized at the same budget",
        f"python -m festa.simulations.bench_learning --fed-run {args.fed_run} --seeds "
        + " ".join(map(str, args.seeds))
        + (" --central-run " + " ".join(map(str, args.central_run)) if args.central_run else ""),
        [
            "task",
            "metric",
            "fed examples",
            "central examples",
            "central",
            "central sd",
            "festa",
            "festa - central",
            "festa s to central final",
            "/ central wall",
        ],
        rows,
        notes=(
            f"Federation: {cfg.clients} clients, partition {cfg.partition}, {cfg.rounds} rounds x "
            f"{cfg.local_steps} local steps, batch {cfg.optim.batch_size}, lr {cfg.optim.lr}, "
            f"degrade {cfg.degrade}, restore {cfg.restore}, seed {cfg.seed}; wall "
            f"{fed_wall:.0f} s. Centralized: {epochs} epochs of {train_images} pooled phantoms, "
            f"mean wall {central_wall:.0f} s over seeds {args.seeds}."
        ),
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
