"""Benchmark festa's restoration solvers against the degraded input and classical baselines.

    python -m festa.simulations.bench_restoration [--model client/restoration/weights/phantom64]

Per degradation: PSNR / SSIM (skimage, [0, 1] scale), data-consistency residual ||y - A(x_hat)||
(always with the true operator, also for BlindDPS) and seconds per image, on held-out phantoms
(seed 12345, never used for training) and a few ``val`` images of ../shared/data/cxr-open downsized
to 64 px. Prints a rich table and appends a section to BENCHMARKS.md with the machine
(via ``festa.simulations.benchmark_table.publish``).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from skimage import restoration, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from festa.client.restoration.restorer import Restorer
from festa.client.restoration.errors import UnsupportedMethodError
from festa.client.restoration.operators import gaussian_kernel, parse_spec
from festa.shared.data.phantoms import phantom_images
from festa.simulations.benchmark_table import publish

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "client" / "restoration" / "weights" / "phantom64"


@dataclass
class Case:
    name: str
    simulate: str  # SPEC that makes y from the clean image
    restore: str  # SPEC the solvers are given
    methods: tuple[str, ...]
    baseline: str
    dps_nfe: str = ""  # overrides --dps-nfe (keeps the run short where there is no CDDB to compare)


CASES = [
    Case(
        "low dose",
        "noise:poisson:dose=200,read=0.01",
        "noise:poisson:dose=200,read=0.01",
        ("dps", "cddb", "cddb-deep"),
        "tv",
    ),
    Case(
        "gauss blur",
        "blur:gauss:sigma=2+noise:gauss:sigma=0.01",
        "blur:gauss:sigma=2+noise:gauss:sigma=0.01",
        ("dps", "cddb", "cddb-deep"),
        "wiener",
    ),
    Case(
        "sr x2",
        "sr:2+noise:gauss:sigma=0.01",
        "sr:2+noise:gauss:sigma=0.01",
        ("dps",),
        "bicubic",
        "100",
    ),
    Case("inpaint box", "inpaint:box", "inpaint:box", ("dps",), "biharmonic", "100"),
    Case(
        "blind motion",
        "blur:motion:length=7,angle=30+noise:gauss:sigma=0.01",
        "blur:unknown+noise:gauss:sigma=0.01",
        ("blinddps",),
        "rl-gauss-guess",
    ),
]


def cxr_val_images(n: int, size: int = 64) -> np.ndarray:
    """The first ``n`` val images of ../shared/data/cxr-open, area-downsized to ``size``."""
    from festa.shared.data.imageio import read_image

    root = REPO.parent / "shared" / "data" / "cxr-open"
    if not (root / "manifest.csv").is_file() or n == 0:
        return np.zeros((0, size, size), np.float32)
    with open(root / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"][:n]
    out = []
    for r in rows:
        img = torch.from_numpy(read_image(root / r["file"]))[None, None]
        out.append(torch.nn.functional.interpolate(img, size=(size, size), mode="area")[0, 0])
    return torch.stack(out).numpy()


def baseline(name: str, y: np.ndarray, case: Case) -> np.ndarray:
    """Classical, training-free restoration of one observation ``y`` ``[h, w]``."""
    if name == "tv":
        return restoration.denoise_tv_chambolle(y, weight=0.05)
    if name == "wiener":
        psf = gaussian_kernel(2.0).numpy()
        return restoration.wiener(y, psf, balance=0.02, clip=True)
    if name == "bicubic":
        return transform.resize(y, (y.shape[0] * 2, y.shape[1] * 2), order=3, mode="reflect")
    if name == "biharmonic":
        mask = 1 - parse_spec(case.simulate).operator.mask(torch.from_numpy(y)).numpy()
        return restoration.inpaint_biharmonic(y, mask.astype(bool))
    if name == "rl-gauss-guess":  # non-blind RL with a guessed Gaussian kernel
        return restoration.richardson_lucy(
            np.clip(y, 0, 1), gaussian_kernel(1.5).numpy(), num_iter=30
        )
    raise ValueError(name)


def degraded_view(y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The observation shown on the clean grid (nearest upsampling for sr)."""
    if y.shape == shape:
        return y
    return transform.resize(y, shape, order=0, mode="edge")


def main(
    model: Annotated[
        Path, typer.Option("--model", help="Restoration model folder.")
    ] = DEFAULT_MODEL,
    n_phantoms: int = typer.Option(2, "--n-phantoms"),
    n_cxr: int = typer.Option(2, "--n-cxr"),
    dps_nfe: str = typer.Option("50,200", "--dps-nfe", help="DPS step counts."),
    cddb_nfe: str = typer.Option("5,20", "--cddb-nfe"),
    blind_nfe: str = typer.Option("100", "--blind-nfe"),
    cases: str = typer.Option("", "--cases", help="Comma-separated case names (default: all)."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    torch.set_num_threads(threads)
    console = Console()
    clean = np.concatenate([phantom_images(n_phantoms, size=64, seed=12345), cxr_val_images(n_cxr)])
    kinds = ["phantom"] * n_phantoms + ["cxr"] * (len(clean) - n_phantoms)
    nfes = {
        "dps": [int(v) for v in dps_nfe.split(",")],
        "cddb": [int(v) for v in cddb_nfe.split(",")],
        "blinddps": [int(v) for v in blind_nfe.split(",")],
    }
    nfes["cddb-deep"] = nfes["cddb"]
    chosen = [c for c in CASES if not cases or c.name in cases.split(",")]
    rows: list[tuple[str, str, str, dict[str, float]]] = []
    start_all = time.perf_counter()

    def score(
        case: Case, label: str, nfe: str, est: np.ndarray, y: torch.Tensor, seconds: float
    ) -> None:
        sim = parse_spec(case.simulate)
        for kind in ("phantom", "cxr"):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            psnr = np.mean(
                [
                    peak_signal_noise_ratio(clean[i], np.clip(est[i], 0, 1), data_range=1)
                    for i in idx
                ]
            )
            ssim = np.mean(
                [structural_similarity(clean[i], np.clip(est[i], 0, 1), data_range=1) for i in idx]
            )
            x = torch.from_numpy(np.clip(est[idx], 0, 1).astype(np.float32))[:, None]
            res = (y[idx] - sim.A(x)).flatten(1).norm(dim=1).mean().item()
            rows.append(
                (
                    case.name,
                    kind,
                    f"{label}{' @' + nfe if nfe else ''}",
                    {"psnr": psnr, "ssim": ssim, "residual": res, "seconds": seconds},
                )
            )

    for case in chosen:
        sim = parse_spec(case.simulate)
        x = torch.from_numpy(clean)[:, None]
        y = torch.cat([sim.simulate(x[i : i + 1], seed=i) for i in range(len(x))])
        y_np = y[:, 0].numpy()
        score(
            case,
            "degraded input",
            "",
            np.stack([degraded_view(v, clean.shape[1:]) for v in y_np]),
            y,
            0.0,
        )
        t = time.perf_counter()
        est = np.stack([baseline(case.baseline, v, case) for v in y_np])
        score(case, case.baseline, "", est, y, (time.perf_counter() - t) / len(y_np))
        for method in case.methods:
            steps = (
                [int(v) for v in case.dps_nfe.split(",")]
                if method == "dps" and case.dps_nfe
                else nfes[method]
            )
            for nfe in steps:
                restorer = Restorer(method, model, nfe=nfe)
                t = time.perf_counter()
                try:
                    out = restorer.restore(y_np, case.restore, seed=0)
                except UnsupportedMethodError as e:
                    console.print(f"[yellow]{case.name}: {method} skipped: {e}[/yellow]")
                    break
                seconds = (time.perf_counter() - t) / len(y_np)
                score(case, method, str(nfe), np.stack([r.image for r in out]), y, seconds)
                console.print(f"{case.name}: {method} @{nfe} done ({seconds:.2f} s/img)")
    total = time.perf_counter() - start_all

    publish(
        f"Restoration ({', '.join(c.name for c in chosen)})",
        "python -m festa.simulations.bench_restoration " + " ".join(sys.argv[1:]),
        ("degradation", "images", "method", "PSNR dB", "SSIM", "residual", "s / image"),
        [(n, k, lab, m["psnr"], m["ssim"], m["residual"], m["seconds"]) for n, k, lab, m in rows],
        notes=(
            f"Device: CPU, {threads} torch thread(s); total wall time {total:.0f} s. Models: "
            f"`{model.relative_to(REPO) if model.is_relative_to(REPO) else model}`; images: "
            f"{n_phantoms} held-out phantoms (seed 12345) + {len(clean) - n_phantoms} cxr-open val "
            "images downsized to 64 px; residual = ||y - A(x_hat)|| with the true operator."
        ),
        console=console,
    )


if __name__ == "__main__":
    typer.run(main)
