"""`festa restore ...`: train priors and bridges, and restore images with DPS, CDDB or BlindDPS."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from client.restoration.errors import RestorationError
from client.restoration.operators import __doc__ as OPERATORS_DOC
from client.restoration.operators import parse_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPEC_HELP = (
    "Degradation SPEC: terms joined with '+', e.g. 'noise:poisson:dose=2000,read=0.01', "
    "'blur:gauss:sigma=2', 'blur:motion:length=7,angle=30', 'blur:unknown', 'sr:4', "
    "'inpaint:box', 'inpaint:random:p=0.5', 'inpaint:lines', "
    "'blur:gauss:sigma=2+noise:gauss:sigma=0.01'. See `festa restore specs`."
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}

app = typer.Typer(help="Diffusion restoration of CXRs: DPS, CDDB, BlindDPS on festa's own priors.",
                  no_args_is_help=True)
console = Console(stderr=True)


def _train_config(steps: int, batch: int, lr: float, seed: int, threads: int):
    from client.restoration.training import TrainConfig

    return TrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, threads=threads,
                       checkpoint_every=max(1, min(100, steps // 5)))


@app.command("specs")
def specs() -> None:
    """Print the degradation SPEC grammar and conventions."""
    typer.echo(OPERATORS_DOC)


@app.command("train-prior")
def train_prior_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (a diffusers DDPMPipeline)."),
    data: str = typer.Option("phantoms", "--data", help="'phantoms' or a folder of PNG/JPEG/DICOM."),
    size: int = typer.Option(64, "--size", help="Training resolution in px (64, 128 or 256)."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("small", "--preset", help="UNet size: tiny | small | base."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from checkpoint.pt."),
) -> None:
    """Train a 1-channel DDPM image prior (UNet2DModel, EMA weights, resumable)."""
    from client.restoration.training import train_prior

    losses = train_prior(data, size, out, _train_config(steps, batch, lr, seed, threads), preset, resume)
    console.print(f"saved image prior to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})")


@app.command("train-kernel-prior")
def train_kernel_prior_cmd(
    out: Path = typer.Option(..., "--out"),
    size: int = typer.Option(16, "--size", help="Kernel grid side in px."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(32, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
) -> None:
    """Train the BlindDPS kernel prior on synthetic Gaussian and motion kernels."""
    from client.restoration.training import train_kernel_prior

    losses = train_kernel_prior(out, _train_config(steps, batch, lr, seed, threads), size, resume)
    console.print(f"saved kernel prior to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})")


@app.command("train-bridge")
def train_bridge_cmd(
    degradation: str = typer.Option(..., "--degradation", help=SPEC_HELP),
    out: Path = typer.Option(..., "--out"),
    data: str = typer.Option("phantoms", "--data"),
    size: int = typer.Option(64, "--size"),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("small", "--preset"),
    init_from: Path | None = typer.Option(None, "--init-from", help="Image-prior folder to start from."),
    threads: int = typer.Option(1, "--threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
) -> None:
    """Train a CDDB bridge on pairs made by degrading clean images with SPEC."""
    from client.restoration.training import train_bridge

    deg = _parse_or_exit(degradation)
    losses = train_bridge(deg, data, size, out, _train_config(steps, batch, lr, seed, threads), preset,
                          init_from, resume)
    console.print(f"saved bridge for {deg.spec} to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})")


def _parse_or_exit(spec: str):
    try:
        return parse_spec(spec)
    except RestorationError as e:
        console.print(f"[red]bad --degradation:[/red] {e}")
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
