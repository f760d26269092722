"""Benchmark: downstream task metrics trained on clean, degraded and restored site data.

    python -m festa.simulations.bench_restore_training [--rounds 12] [--local-steps 30]
        [--seeds 0,1,2] [--tasks classification,segmentation,detection]
        [--methods gctm,cddb | gctm@1,cddb@10] [--nfe 10] [--fit F] [--engine inprocess]
        [--scanners default|lowdose50|blur3|SPEC] [--degraded-sites half|all] [--clients 6]
        [--no-write]

Every arm is a real `festa simulate` (6 clients by default, spread round-robin over the
tasks). In the degraded arms, sites acquire through the simulated scanners of
`festa.client.restored_data`: `--scanners default` is low dose
`noise:poisson:dose=200,read=0.01` and Gaussian blur sigma 2 + noise in turn, `lowdose50` is
`noise:poisson:dose=50,read=0.01` on every degraded site, `blur3` blur sigma 3 + noise, and
any other SPEC (e.g. `noise:poisson:dose=10,read=0.01`) is the scanner of every degraded
site (phantom64 has bridges and GCTM models for the default scanners, lowdose50 and blur3).
`--degraded-sites half` (default) degrades the odd-numbered sites, `all` every site.
Restored arms clean those acquisitions with the site's restoration engine before training
(cached per seed and method; METHOD@NFE sets one method's NFE, else --nfe). Validation is on
clean images. Each arm runs once per seed; the table gives mean ± std over seeds and the
recovered fraction (restored - degraded) / (clean - degraded), computed per seed (same seed
= same partition, initialisation and scanner noise) and then averaged.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
from pathlib import Path

from festa.client.restored_data import (
    DEGRADED_SITES,
    SCANNER_SETS,
    scanner_specs,
    site_scanner,
)
from festa.shared.config import FederationConfig
from festa.shared.data.partition import assign_tasks
from festa.shared.tasks import primary_metric
from festa.simulations.bench_federation import primary, simulate
from festa.simulations.benchmark_table import machine_line, publish


def recovered_fraction(clean: float, degraded: float, restored: float) -> float:
    """(restored - degraded) / (clean - degraded); NaN when the degradation cost nothing.

    A cost <= 0 (degraded scored as well as clean) leaves nothing to recover, so no
    fraction is defined for it.
    """
    cost = clean - degraded
    if not cost > 0:
        return float("nan")
    return (restored - degraded) / cost


def mean_std(values: list[float]) -> str:
    """'m ± s' over the finite values (s = sample std; '-' when none are finite)."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _run_arms(
    base: FederationConfig,
    arms: list[tuple[str, dict]],
    seeds: list[int],
    work: Path,
    scanning: str,
    engine: str,
) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[tuple[int, float]]]]:
    """Each arm once per seed: (primary metric per task, (images restored, wall s)) per arm."""
    values: dict[str, dict[int, list[float]]] = {}
    extras: dict[str, list[tuple[int, float]]] = {}
    for label, arm in arms:
        for seed in seeds:
            cfg = base.model_copy(update={**arm, "seed": seed})
            name = f"{label.split()[0]}-{cfg.restore}-seed{seed}"
            if cfg.restore != "none":
                name = (
                    f"{label.split()[0]}-{cfg.restore}-nfe{cfg.restore_nfe}"
                    f"-fit{cfg.restore_fit:g}-seed{seed}"
                )
            out = work / (name if cfg.degrade == "none" else f"{scanning}-{name}")
            s = simulate(cfg, out, engine)
            values.setdefault(label, {})[seed] = [primary(s["final"], t) for t in base.tasks]
            restored = sum(
                (c.get("restoration") or {}).get("restored", 0)
                for c in s["rounds_records"][-1]["clients"].values()
            )
            extras.setdefault(label, []).append((restored, s["wall_seconds"]))
            print(f"{label} seed {seed}: {values[label][seed]} ({s['wall_seconds']:.0f} s)")
    return values, extras


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-steps", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    parser.add_argument(
        "--methods",
        default="gctm,cddb",
        help="comma-separated restoration methods, each optionally METHOD@NFE (e.g. gctm@1)",
    )
    parser.add_argument("--nfe", type=int, default=10, help="NFE of a method given without @")
    parser.add_argument(
        "--fit",
        type=float,
        default=None,
        help="restorations' final-fit weight (restore_fit; 0: off; default: the run config's)",
    )
    parser.add_argument("--engine", choices=["flower", "inprocess"], default="inprocess")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--scanners",
        default="default",
        help=f"degraded sites' scanners: one of {', '.join(SCANNER_SETS)}, or a degradation SPEC",
    )
    parser.add_argument("--degraded-sites", choices=DEGRADED_SITES, default="half")
    parser.add_argument("--clients", type=int, default=6, help="simulated clients")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds names no seed")
    try:
        scanner_specs(args.scanners)
    except ValueError as exc:
        parser.error(str(exc))
    work = args.work or Path(tempfile.mkdtemp(prefix="festa-bench-restore-"))
    update = {"rounds": args.rounds, "local_steps": args.local_steps, "restore_nfe": args.nfe}
    update["clients"] = args.clients
    update["scanners"], update["degraded_sites"] = args.scanners, args.degraded_sites
    update["restore_cache"] = str(work / "cache")
    if args.tasks:
        update["tasks"] = _csv(args.tasks)
    base = FederationConfig(**update)  # validates tasks, budget and methods
    arms: list[tuple[str, dict]] = [
        ("clean", {"degrade": "none", "restore": "none"}),
        ("degraded", {"degrade": "site", "restore": "none"}),
    ]
    for m in _csv(args.methods):
        method, _, nfe = m.partition("@")
        try:
            n = int(nfe) if nfe else args.nfe
            arm = {"degrade": "site", "restore": method, "restore_nfe": n}
            if args.fit is not None:
                arm["restore_fit"] = args.fit
            FederationConfig(**{**update, **arm})  # validates the method and NFE
        except ValueError as exc:
            parser.error(f"--methods: {m!r} is not METHOD or METHOD@NFE ({exc})")
        fit = f", fit {arm.get('restore_fit', base.restore_fit):g}"
        arms.append((f"restored ({method}, {n} NFE{fit})", arm))

    # The degraded runs' folders are named after the scanners, so that no run of other scanners
    # is reused (the clean runs are shared).
    scanning = re.sub(r"[^\w.=-]+", "_", f"{args.scanners}-{args.degraded_sites}")
    values, extras = _run_arms(base, arms, seeds, work, scanning, args.engine)

    rows = []
    for label, _ in arms:
        per_task = [[values[label][s][k] for s in seeds] for k in range(len(base.tasks))]
        fractions = []
        for k in range(len(base.tasks)):
            f = [
                recovered_fraction(
                    values["clean"][s][k], values["degraded"][s][k], values[label][s][k]
                )
                for s in seeds
            ]
            fractions.append(mean_std(f) if label.startswith("restored") else "")
        rows.append(
            [
                label,
                *(mean_std(v) for v in per_task),
                *fractions,
                extras[label][0][0],
                statistics.mean(w for _, w in extras[label]),
            ]
        )
    tasks = assign_tasks(args.clients, base.tasks)
    degraded = [
        f"client-{i} ({tasks[i]}) `{spec}`"
        for i in range(args.clients)
        if (spec := site_scanner(i, args.scanners, args.degraded_sites))
    ]
    publish(
        "Restoration that pays off downstream: clean vs degraded vs restored training data",
        "python -m festa.simulations.bench_restore_training "
        + " ".join(sys.argv[1:] if argv is None else argv),
        [
            "training data",
            *(f"{t} {primary_metric(t)}" for t in base.tasks),
            *(f"recovered {t[:4]}" for t in base.tasks),
            "images restored",
            "wall s / run",
        ],
        rows,
        notes=(
            f"{args.rounds} rounds x {args.local_steps} local steps, {args.clients} clients "
            f"(tasks round-robin), Dirichlet(0.5) within each task group, {args.engine} engine; seeds "
            f"{','.join(map(str, seeds))}, mean ± std over seeds. Scanners `{args.scanners}`, "
            f"{args.degraded_sites} of the sites degraded: {', '.join(degraded)}. Restoration with the "
            "committed 64-px phantom weights (`client/restoration/weights/phantom64`). Validation on "
            "clean images. recovered = (restored - degraded) / (clean - degraded) per seed, mean ± std; "
            "'-' where the degradation cost nothing in any seed."
        ),
        machine=machine_line(),
        write=not args.no_write,
    )
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
