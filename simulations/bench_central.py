"""Benchmark: `festa train-central` quality and time on phantoms and on cxr-open.

    python -m festa.simulations.bench_central [--epochs 10] [--train-size 3000] [--cxr-open PATH]

Targets (issue 2), tiny preset at 64 px on CPU: classification AUC >= 0.90, segmentation
Dice >= 0.85, detection mAP@0.5 >= 0.50 (VOC all-point AP, mean over box classes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from festa.shared.config import CentralConfig, DataConfig, OptimConfig, model_preset
from festa.shared.train.central import train_central
from festa.simulations.benchmark_table import publish

TARGETS = {"classification": 0.90, "segmentation": 0.85, "detection": 0.50}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument(
        "--cxr-open",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/cxr-open",
    )
    parser.add_argument("--cxr-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_central"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    runs = [("phantoms", "phantoms", args.epochs)]
    if (args.cxr_open / "manifest.csv").exists():
        runs.append(("cxr-open (train -> val)", str(args.cxr_open), args.cxr_epochs))
    for label, source, epochs in runs:
        cfg = CentralConfig(
            model=model_preset("tiny"),
            optim=OptimConfig(batch_size=32),
            data=DataConfig(source=source, train_size=args.train_size, val_size=args.val_size),
            epochs=epochs,
        )
        summary = train_central(cfg, args.out / label.split()[0])
        for task, value in summary["primary"].items():
            target = TARGETS[task] if source == "phantoms" else None
            met = "-" if target is None or value is None else ("yes" if value >= target else "NO")
            rows.append(
                [
                    label,
                    task,
                    _metric_name(task),
                    value if value is not None else "n/a",
                    target or "-",
                    met,
                    summary["train_size"],
                    epochs,
                    summary["train_samples_per_second"],
                    summary["wall_seconds"],
                ]
            )
    publish(
        "Centralized baseline (train-central, tiny preset, 64 px, CPU)",
        "python -m festa.simulations.bench_central " + " ".join(sys.argv[1:] if argv is None else argv),
        [
            "data",
            "task",
            "metric",
            "value",
            "target",
            "met",
            "train images",
            "epochs",
            "train img/s",
            "wall s",
        ],
        rows,
        notes=(
            "Phantom val set: a disjoint seed. cxr-open: train split -> val split at 64 px; its finding labels are "
            "confounded with site (adult COVID source vs paediatric pneumonia source), so classification AUC there "
            "measures site recognition as much as disease and is not clinical evidence. Detection on cxr-open = lung boxes only."
        ),
    )


def _metric_name(task: str) -> str:
    return {"classification": "AUC (macro OvR)", "segmentation": "Dice", "detection": "mAP@0.5"}[
        task
    ]


if __name__ == "__main__":
    main()
