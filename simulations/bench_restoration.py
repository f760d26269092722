"""Benchmark festa's restoration solvers on real CXRs against the degraded input, classical
baselines and deepinv's solvers on the same prior.

    python -m festa.simulations.bench_restoration [--model client/restoration/weights/cxr64]
        [--n-val 20] [--cases "low dose,gauss blur"] [--fits default,0,0.01] [--mirror]

Images: the first ``--n-val`` rows of the cxr-open ``val`` split (never used to train the cxr64
weights), area-downsized to the model's size. Observations are made by
:func:`festa.client.restoration.scanner.degrade` (what ``festa restore degrade`` writes), seed
``--seed`` and each image's manifest id. Classical baselines have their one parameter tuned on
``--n-tune`` cxr-open *train* images. Every method is scored by PSNR and SSIM (skimage, [0, 1]
scale), reported as mean ± std over the images; the goal column checks each festa solver against
the degraded input and the best classical baseline (+1 dB each). Per-image scores and the
settings go to ``runs/bench-restoration/<time>.json``; the table goes to BENCHMARKS.md.
``--fits`` gives each festa solver one row per final-fit weight (``Restorer``'s ``fit``; rows
without ``fit`` in their label use each degradation's default: 1e-2, off for low dose).
``--mirror`` adds a row per solver with the mirror self-ensemble (``Restorer``'s ``mirror``).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from skimage import transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from festa.client.restoration.committed_weights import CXR_WEIGHTS
from festa.client.restoration.errors import RestorationError
from festa.client.restoration.models import bridge_specs, load_bridge, load_prior
from festa.client.restoration.operators import parse_spec
from festa.client.restoration.restorer import Restorer
from festa.client.restoration.scanner import degrade
from festa.client.restoration.training import TRAIN_SPLIT, manifest_images
from festa.simulations import restoration_baselines as rb
from festa.simulations.benchmark_table import publish

REPO = Path(__file__).resolve().parents[1]
CXR_OPEN = Path(os.environ.get("FESTA_CXR_OPEN", REPO.parent / "shared" / "data" / "cxr-open"))
GOAL_DB = 1.0  # every festa solver this far above the degraded input and the best baseline


@dataclass(frozen=True)
class Case:
    name: str
    simulate: str  # SPEC that makes y from the clean image (the scanner)
    restore: str  # SPEC the solvers are given
    classical: tuple[str, ...]
    festa: tuple[str, ...]


CASES = [
    Case(
        "low dose",
        "noise:poisson:dose=200,read=0.01",
        "noise:poisson:dose=200,read=0.01",
        ("TV", "BM3D"),
        ("dps", "cddb", "cddb-deep"),
    ),
    Case(
        "gauss blur",
        "blur:gauss:sigma=2+noise:gauss:sigma=0.01",
        "blur:gauss:sigma=2+noise:gauss:sigma=0.01",
        ("Wiener (true k)", "Richardson-Lucy (true k)"),
        ("dps", "cddb", "cddb-deep"),
    ),
    Case(
        "sr x2",
        "sr:2+noise:gauss:sigma=0.01",
        "sr:2+noise:gauss:sigma=0.01",
        ("bicubic",),
        ("dps", "cddb", "cddb-deep"),
    ),
    Case(
        "inpaint box", "inpaint:box", "inpaint:box", ("biharmonic",), ("dps", "cddb", "cddb-deep")
    ),
    Case(
        "blind motion",
        "blur:motion:length=7,angle=30+noise:gauss:sigma=0.01",
        "blur:unknown+noise:gauss:sigma=0.01",
        ("Wiener (true k)", "Richardson-Lucy (true k)"),
        ("blinddps", "cddb"),  # cddb: a bridge trained on random kernels, where one exists
    ),
]


def observe(clean: np.ndarray, names: list[str], spec: str, seed: int) -> np.ndarray:
    """The scanner's observations ``[B, h, w]`` of clean images, one seed per image name."""
    return np.stack([degrade(x, spec, seed, name=n).y for x, n in zip(clean, names, strict=True)])


def on_clean_grid(y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An observation shown on the clean grid (nearest upsampling for sr)."""
    return y if y.shape == shape else transform.resize(y, shape, order=0, mode="edge")


def scores(clean: np.ndarray, est: np.ndarray) -> dict[str, list[float]]:
    est = np.clip(est, 0, 1)
    return {
        "psnr": [
            peak_signal_noise_ratio(c, e, data_range=1) for c, e in zip(clean, est, strict=True)
        ],
        "ssim": [
            structural_similarity(c, e, data_range=1) for c, e in zip(clean, est, strict=True)
        ],
    }


def main(
    model: Annotated[Path, typer.Option("--model", help="Restoration model folder.")] = CXR_WEIGHTS,
    data: Annotated[
        Path, typer.Option("--data", help="cxr-open folder (manifest.csv).")
    ] = CXR_OPEN,
    n_val: int = typer.Option(20, "--n-val", help="val images per cell"),
    n_tune: int = typer.Option(4, "--n-tune", help="train images the baselines are tuned on"),
    dps_nfe: int = typer.Option(100, "--dps-nfe"),
    cddb_nfe: str = typer.Option("1,20", "--cddb-nfe", help="comma-separated CDDB step counts"),
    blind_nfe: int = typer.Option(100, "--blind-nfe"),
    deepinv_steps: int = typer.Option(100, "--deepinv-steps", help="DPS/DiffPIR/DDRM steps"),
    cases: str = typer.Option("", "--cases", help="Comma-separated case names (default: all)."),
    methods: str = typer.Option(
        "", "--methods", help="Comma-separated festa solvers to run (default: each case's all)."
    ),
    deepinv: bool = typer.Option(True, "--deepinv/--no-deepinv", help="Run deepinv's solvers."),
    fits: str = typer.Option(
        "",
        "--fits",
        help="Comma-separated final-fit weights of the festa solvers (Restorer's fit; 0: off; "
        "'default': each degradation's default), one row each. Default: 'default' only.",
    ),
    mirror: bool = typer.Option(
        False, "--mirror", help="Also a row per festa solver with Restorer's mirror ensemble."
    ),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    write: bool = typer.Option(True, "--write/--no-write", help="Append to BENCHMARKS.md."),
    from_json: str = typer.Option(
        "", "--from-json", help="Comma-separated result JSONs of earlier runs: report them only."
    ),
) -> None:
    torch.set_num_threads(threads)
    console = Console()
    if from_json:
        paths = [Path(p) for p in from_json.split(",")]
        loaded = [json.loads(p.read_text()) for p in paths]
        cells = {case: cell for run in loaded for case, cell in run["results"].items()}
        merged = {c.name: cells[c.name] for c in CASES if c.name in cells}
        report(merged, [run["settings"] for run in loaded], paths, threads, console, write)
        return
    # A folder of bridges alone (cxr128) has no prior: dps, blinddps and deepinv's rows then
    # report that they need one, and the image size comes from its first bridge.
    prior = load_prior(model / "prior") if (model / "prior").is_dir() else None
    size = prior.size if prior else load_bridge(next(iter(bridge_specs(model).values()))).size
    clean, ids = manifest_images(data, "val", size, limit=n_val)
    tune_x, tune_ids = manifest_images(data, TRAIN_SPLIT, size, limit=n_tune)
    chosen = [c for c in CASES if not cases or c.name in cases.split(",")]
    cddb_steps = [int(v) for v in cddb_nfe.split(",")]
    nfe = {"dps": [dps_nfe], "cddb": cddb_steps, "cddb-deep": cddb_steps, "blinddps": [blind_nfe]}
    wanted = set(methods.split(",")) if methods else set(nfe)
    nfe = {m: n for m, n in nfe.items() if m in wanted}
    fit_values: list[float | None] = [
        None if v == "default" else float(v) for v in (fits or "default").split(",")
    ]
    results: dict[str, dict[str, dict]] = {}
    start_all = time.perf_counter()
    out = (
        REPO / "runs" / "bench-restoration" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": str(model), "size": size, "n_val": len(clean), "val_ids": ids, "tune_ids": tune_ids,
        "nfe": nfe, "final_fit": ["default" if f is None else f for f in fit_values], "mirror": mirror,
        "deepinv_steps": deepinv_steps if deepinv else 0, "seed": seed,
        "cases": [c.__dict__ for c in chosen],
        "torch": torch.__version__, "load_at_start": os.getloadavg()[0],
    }  # fmt: skip
    for case in chosen:
        sim = parse_spec(case.simulate)
        y = observe(clean, ids, case.simulate, seed)
        cell: dict[str, dict] = {}
        results[case.name] = cell
        view = np.stack([on_clean_grid(v, clean.shape[1:]) for v in y])
        cell["degraded input"] = {"kind": "input", "seconds": 0.0, **scores(clean, view)}
        tune_y = observe(tune_x, tune_ids, case.simulate, seed)
        for name in case.classical:
            param = rb.tune(name, tune_x, tune_y, sim)
            t = time.perf_counter()
            est = np.stack([rb.run_classical(name, v, sim, param) for v in y])
            seconds = (time.perf_counter() - t) / len(y)
            cell[name] = {
                "kind": "classical",
                "param": param,
                "seconds": seconds,
                **scores(clean, est),
            }
        for method in case.festa:
            if method not in wanted:
                continue
            mirrors = (False, True) if mirror and method != "blinddps" else (False,)
            for steps, fit, mirrored in itertools.product(nfe[method], fit_values, mirrors):
                label = f"festa {method} @{steps}"
                if fit is not None:
                    label += f" fit {fit:g}"
                if mirrored:
                    label += " mirror"
                try:
                    restorer = Restorer(method, model, nfe=steps, fit=fit, mirror=mirrored)
                    t = time.perf_counter()
                    restored = restorer.restore(y, case.restore, seed=seed)
                except RestorationError as e:  # a missing bridge is a reported gap, not a crash
                    console.print(f"[yellow]{case.name}: {method} not run: {e}[/yellow]")
                    cell[label] = {"kind": "festa", "error": str(e)}
                    break
                seconds = (time.perf_counter() - t) / len(y)
                est = np.stack([r.image for r in restored])
                cell[label] = {"kind": "festa", "seconds": seconds, **scores(clean, est)}
                psnr = np.mean(cell[label]["psnr"])
                console.print(f"{case.name}: {label} {psnr:.2f} dB ({seconds:.2f} s/img)")
        restore_deg = parse_spec(case.restore)
        for method in rb.DEEPINV_METHODS:
            if not deepinv or prior is None or not rb.deepinv_applicable(method, restore_deg):
                continue
            t = time.perf_counter()
            est = rb.run_deepinv(method, prior, restore_deg, y, deepinv_steps, seed)
            seconds = (time.perf_counter() - t) / len(y)
            label = f"{method} @{deepinv_steps}"
            cell[label] = {"kind": "deepinv", "seconds": seconds, **scores(clean, est)}
            console.print(f"{case.name}: {label} {np.mean(cell[label]['psnr']):.2f} dB")
        settings["seconds"] = time.perf_counter() - start_all
        out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    report(results, [settings], [out], threads, console, write)


def report(
    results: dict[str, dict[str, dict]],
    runs: list[dict],
    paths: list[Path],
    threads: int,
    console: Console,
    write: bool,
) -> None:
    """Print (and append to BENCHMARKS.md) the table of ``results`` from one or more runs."""
    first = runs[0]
    ids, model = first["val_ids"], Path(first["model"])
    sites = sorted({i.split("_")[0] for i in ids})
    wall = ", ".join(
        f"{r['seconds']:.0f} s (1-min load at start {r.get('load_at_start', float('nan')):.1f})"
        for r in runs
    )
    publish(
        f"Restoration on real CXRs ({', '.join(results)})",
        "python -m festa.simulations.bench_restoration " + " ".join(sys.argv[1:]),
        (
            "case",
            "method",
            "PSNR dB",
            "SSIM",
            "Δ input dB",
            "Δ best classical dB",
            "goal",
            "s / image",
        ),
        table_rows(results),
        notes=(
            f"Device: CPU, {threads} torch thread(s); wall time per run: {wall}. Models: "
            f"`{model.relative_to(REPO) if model.is_relative_to(REPO) else model}` "
            f"({first.get('size', 64)} px). "
            f"Images: the first {len(ids)} cxr-open val rows (id prefixes {', '.join(sites)}; "
            "their finding labels are confounded with site, irrelevant to PSNR/SSIM), "
            f"area-downsized, mean ± std over images; seed {first['seed']}; NFE {first['nfe']}; "
            f"final fit {first.get('final_fit', 0)}, "
            f"deepinv steps {first['deepinv_steps'] or 'not run'}. Classical parameters (in brackets) tuned "
            f"on {len(first['tune_ids'])} train images. Goal: festa solver ≥ {GOAL_DB:g} dB "
            "above both the degraded input and the best classical row. Per-image scores: "
            + ", ".join(f"`{p.relative_to(REPO) if p.is_relative_to(REPO) else p}`" for p in paths)
            + "."
        ),
        console=console,
        write=write,
    )


def _pm(values: list[float], digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table_rows(results: dict[str, dict[str, dict]]) -> list[tuple]:
    """One row per (case, method), with the deltas and the goal verdict for festa solvers."""
    rows = []
    for case, cell in results.items():
        base = np.mean(cell["degraded input"]["psnr"])
        classical = [np.mean(m["psnr"]) for m in cell.values() if m["kind"] == "classical"]
        best = max(classical) if classical else float("nan")
        for label, m in cell.items():
            if "error" in m:
                rows.append((case, label, "not run", "", "", "", "MISSED (not run)", ""))
                continue
            psnr = np.mean(m["psnr"])
            goal = ""
            if m["kind"] == "festa":
                met = psnr >= base + GOAL_DB and psnr >= best + GOAL_DB
                goal = "MET" if met else "MISSED"
            rows.append(
                (
                    case,
                    label
                    + (f" ({m['param']:g})" if m["kind"] == "classical" and m["param"] else ""),
                    _pm(m["psnr"], 2),
                    _pm(m["ssim"], 3),
                    f"{psnr - base:+.2f}",
                    f"{psnr - best:+.2f}" if m["kind"] != "classical" else "",
                    goal,
                    f"{m['seconds']:.2f}",
                )
            )
    return rows


if __name__ == "__main__":
    typer.run(main)
