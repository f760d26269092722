"""`festa restore ...`: train priors and bridges, and restore images with DPS, CDDB or BlindDPS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from festa.client.restoration.errors import RestorationError
from festa.client.restoration.operators import __doc__ as OPERATORS_DOC
from festa.client.restoration.operators import parse_spec
from festa.shared.runtime import configure_process

SPEC_HELP = (
    "Degradation SPEC: terms joined with '+', e.g. 'noise:poisson:dose=2000,read=0.01', "
    "'blur:gauss:sigma=2', 'blur:motion:length=7,angle=30', 'blur:unknown', 'sr:4', "
    "'inpaint:box', 'inpaint:random:p=0.5', 'inpaint:lines', "
    "'blur:gauss:sigma=2+noise:gauss:sigma=0.01'. See `festa restore specs`."
)
# The grammar part of the operators' docstring, shown under `run --help` and `train-bridge --help`.
SPEC_GRAMMAR = "\n\n".join(
    line.strip() for line in OPERATORS_DOC.split("::")[1].split("e.g.")[0].strip().splitlines()
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}

app = typer.Typer(
    help="Diffusion restoration of CXRs: DPS, CDDB, BlindDPS on festa's own priors.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _train_config(
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    threads: int,
    lesion_share: float | None = None,
    data: str = "phantoms",
):
    """The training settings of a `train-*` command; runs torch on ``threads`` CPU threads."""
    from festa.client.restoration.training import TrainConfig

    if lesion_share is not None and (data != "phantoms" or not 0.0 <= lesion_share <= 1.0):
        console.print(
            f"[red]--lesion-share takes a share in [0, 1] of --data phantoms; got {lesion_share} "
            f"with --data {data}[/red]"
        )
        raise typer.Exit(2)
    configure_process(threads=threads)
    return TrainConfig(
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint_every=max(1, min(100, steps // 5)),
        lesion_share=lesion_share,
    )


LESION_SHARE_HELP = (
    "Phantoms only: the share of training phantoms that carry a focal lesion (default: the "
    "generator's own mix, about a third). A higher share keeps more lesion contrast."
)


@app.command("specs")
def specs() -> None:
    """Print the degradation SPEC grammar and conventions."""
    typer.echo(OPERATORS_DOC)


@app.command("train-prior")
def train_prior_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder (a diffusers DDPMPipeline).")],
    data: str = typer.Option(
        "phantoms", "--data", help="'phantoms' or a folder of PNG/JPEG/DICOM."
    ),
    size: int = typer.Option(64, "--size", help="Training resolution in px (64, 128 or 256)."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("small", "--preset", help="UNet size: tiny | small | base."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from checkpoint.pt."),
    federation: Annotated[
        Path | None,
        typer.Option(
            "--federation",
            help="Federation file: train ONE prior across its sites with Flower (FedAvg of the "
            "UNet each round; images stay at their site). Replaces --steps; --data PATH then "
            "replaces every site's data folder.",
        ),
    ] = None,
    rounds: int = typer.Option(6, "--rounds", min=1, help="Flower rounds (with --federation)."),
    local_steps: int = typer.Option(
        12, "--local-steps", min=1, help="Steps per site per round (with --federation)."
    ),
) -> None:
    """Train a 1-channel DDPM image prior (UNet2DModel, EMA weights, resumable), or with
    --federation one prior across hospitals with Flower."""
    if federation is not None:
        _train_federated_prior(
            federation, out, size, rounds, local_steps, batch, lr, seed, preset, threads, data
        )
        return
    from festa.client.restoration.training import train_prior

    losses = train_prior(
        data, size, out, _train_config(steps, batch, lr, seed, threads), preset, resume
    )
    console.print(
        f"saved image prior to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})"
    )


def _train_federated_prior(
    federation: Path,
    out: Path,
    size: int,
    rounds: int,
    local_steps: int,
    batch: int,
    lr: float,
    seed: int,
    preset: str,
    threads: int,
    data: str,
) -> None:
    from festa.client.restoration.federated_prior import FederatedPriorConfig
    from festa.client.restoration.federated_prior_flower import train_federated_prior
    from festa.shared.federation_file import FederationFileError

    configure_process(threads=threads)
    cfg = FederatedPriorConfig(
        str(federation),
        rounds,
        local_steps,
        batch,
        lr,
        seed,
        size,
        preset,
        data="" if data == "phantoms" else data,
    )
    try:
        result = train_federated_prior(cfg, out)
    except (FederationFileError, ValueError) as e:
        console.print(f"[red]cannot train a federated prior:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(
        f"saved federated image prior ({len(result.rounds)} rounds, "
        f"{len(result.rounds[-1]['sites'])} sites) to {out}"
    )


@app.command("train-kernel-prior")
def train_kernel_prior_cmd(
    out: Annotated[Path, typer.Option("--out")],
    size: int = typer.Option(16, "--size", help="Kernel grid side in px."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(32, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
) -> None:
    """Train the BlindDPS kernel prior on synthetic Gaussian and motion kernels."""
    from festa.client.restoration.training import train_kernel_prior

    losses = train_kernel_prior(out, _train_config(steps, batch, lr, seed, threads), size, resume)
    console.print(
        f"saved kernel prior to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})"
    )


@app.command("train-bridge", epilog=SPEC_GRAMMAR)
def train_bridge_cmd(
    degradation: Annotated[str, typer.Option("--degradation", help=SPEC_HELP)],
    out: Annotated[Path, typer.Option("--out")],
    data: str = typer.Option("phantoms", "--data"),
    size: int = typer.Option(64, "--size"),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("small", "--preset"),
    init_from: Annotated[
        Path | None, typer.Option("--init-from", help="Image-prior folder to start from.")
    ] = None,
    threads: int = typer.Option(1, "--threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
    lesion_share: float | None = typer.Option(None, "--lesion-share", help=LESION_SHARE_HELP),
) -> None:
    """Train a CDDB bridge on pairs made by degrading clean images with SPEC."""
    from festa.client.restoration.training import train_bridge

    deg = _parse_or_exit(degradation)
    losses = train_bridge(
        deg,
        data,
        size,
        out,
        _train_config(steps, batch, lr, seed, threads, lesion_share, data),
        preset,
        init_from,
        resume,
    )
    console.print(
        f"saved bridge for {deg.spec} to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})"
    )


@app.command("train-gctm")
def train_gctm_cmd(
    bridge: Annotated[
        Path, typer.Option("--bridge", help="CDDB bridge folder to distil (its SPEC is used).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder, e.g. MODEL/gctm/<name>.")],
    data: str = typer.Option("phantoms", "--data", help="'phantoms' or a folder of images."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(8, "--batch"),
    lr: float = typer.Option(2e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    teacher_nfe: int = typer.Option(
        20, "--teacher-nfe", help="Teacher steps span at most n / this many bridge steps."
    ),
    threads: int = typer.Option(1, "--threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
    lesion_share: float | None = typer.Option(None, "--lesion-share", help=LESION_SHARE_HELP),
) -> None:
    """Distil a CDDB bridge into a one-step GCTM model (method gctm of `restore run`)."""
    from festa.client.restoration.gctm import GCTMLoss, train_gctm

    try:
        losses = train_gctm(
            bridge,
            data,
            out,
            _train_config(steps, batch, lr, seed, threads, lesion_share, data),
            GCTMLoss(teacher_nfe=teacher_nfe),
            resume,
        )
    except RestorationError as e:
        console.print(f"[red]cannot train:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"saved GCTM model to {out} (final loss {np.mean(losses[-50:] or [np.nan]):.4f})")


def _image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        console.print(f"[red]--input {path} does not exist[/red]")
        raise typer.Exit(2)
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _write_png16(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from festa.client.restoration.scanner import to_png16

    Image.fromarray(to_png16(image)).save(path)


def _report_failures(out: Path, failed: dict[str, str], suffix: str) -> None:
    """Print each skipped input's reason and write it to ``<stem>.<suffix>error.json``."""
    for name, reason in failed.items():
        console.print(f"[red]skipped {name}:[/red] {reason}")
        (out / f"{Path(name).stem}.{suffix}error.json").write_text(
            json.dumps({"input": name, "error": reason}, indent=2) + "\n"
        )


@app.command("degrade", epilog=SPEC_GRAMMAR)
def degrade_cmd(
    degradation: Annotated[str, typer.Option("--degradation", help=SPEC_HELP)],
    input: Annotated[
        Path, typer.Option("--input", help="A clean image (PNG/JPEG/DICOM) or a folder of them.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: <stem>.png (16-bit) + <stem>.json.")
    ],
    seed: int = typer.Option(0, "--seed", help="Run seed; each image's seed derives from it."),
) -> None:
    """Simulate a scanner: degrade every clean image of --input with SPEC. Writes the observation
    as a 16-bit PNG and a JSON record of the operator (SPEC, seeds, parameters, and the kernel
    of a blind blur). An unreadable or unfit image is reported and skipped; the rest still run."""
    from festa.client.restoration.scanner import degrade
    from festa.shared.data.imageio import ImageReadError, read_image

    configure_process()
    _parse_or_exit(degradation)
    files = _image_files(input)
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    for path in files:
        try:
            scanned = degrade(read_image(path), degradation, seed, name=path.name)
        except (ImageReadError, RestorationError) as e:
            failed[path.name] = str(e)
            continue
        _write_png16(out / f"{path.stem}.png", scanned.y)
        record = {"input": str(path), "output": f"{path.stem}.png", **scanned.record}
        (out / f"{path.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    _report_failures(out, failed, "")
    console.print(f"degraded {len(files) - len(failed)} image(s) to {out}; {len(failed)} skipped")
    if failed:
        raise typer.Exit(1)


@app.command("run", epilog=SPEC_GRAMMAR)
def run_cmd(
    method: Annotated[
        str, typer.Option("--method", help="dps | cddb | cddb-deep | blinddps | gctm")
    ],
    degradation: Annotated[str, typer.Option("--degradation", help=SPEC_HELP)],
    input: Annotated[
        Path, typer.Option("--input", help="An image (PNG/JPEG/DICOM) or a folder of them.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: <stem>.<method>.png (16-bit) + .json.")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model folder: prior/, kernel_prior/, bridges/*/, gctm/*/. Default: the committed cxr64 "
            "weights (trained on real radiographs); phantom images want weights/phantom64.",
        ),
    ] = None,
    nfe: int | None = typer.Option(
        None, "--nfe", help="Steps (default: dps/blinddps 1000, cddb 20, gctm 1)."
    ),
    batch: int = typer.Option(4, "--batch", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
    fit: float | None = typer.Option(
        None,
        "--fit",
        min=0,
        help="Final pull of each result towards its scan, so small findings the network "
        "smoothed away come back (0: off; default 1e-2, off for noise-only SPECs, where it "
        "adds noise back). Not used for blur:unknown (blinddps, blind bridges).",
    ),
    mirror: bool = typer.Option(
        False,
        "--mirror",
        help="Also restore each scan mirrored left-right and average the two (twice the time; "
        "left-right symmetric SPECs, or blur:unknown with a blind bridge; not blinddps).",
    ),
) -> None:
    """Restore every image of --input; one bad image is reported and skipped, the rest still run."""
    from rich.progress import Progress

    from festa.client.restoration.committed_weights import default_model_dir
    from festa.client.restoration.restorer import Restorer
    from festa.shared.data.imageio import ImageReadError, read_image

    configure_process(threads=threads)
    _parse_or_exit(degradation)
    files = _image_files(input)
    try:
        restorer = Restorer(
            method,
            model or default_model_dir(real_data=True),
            nfe=nfe,
            device=device,
            fit=fit,
            mirror=mirror,
        )
        restorer.parse(degradation)
    except RestorationError as e:
        console.print(f"[red]cannot restore:[/red] {e}")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    good: dict[tuple[int, int], list[tuple[Path, np.ndarray]]] = {}
    for path in files:
        try:
            image = read_image(path)
            restorer.validate(image[None], degradation)
        except (ImageReadError, RestorationError) as e:
            failed[path.name] = str(e)
            continue
        good.setdefault(image.shape, []).append((path, image))
    _report_failures(out, failed, f"{method}.")
    todo = [
        chunk
        for items in good.values()
        for chunk in (items[i : i + batch] for i in range(0, len(items), batch))
    ]
    with Progress(console=console, disable=not todo) as bar:
        task = bar.add_task(f"{method} restore", total=sum(len(c) for c in todo))
        for chunk in todo:
            results = restorer.restore(np.stack([im for _, im in chunk]), degradation, seed=seed)
            for (path, _), res in zip(chunk, results, strict=True):
                stem = f"{path.stem}.{method}"
                _write_png16(out / f"{stem}.png", res.image)
                record = {"input": str(path), **res.provenance}
                if res.kernel is not None:
                    record["kernel"] = res.kernel.round(6).tolist()
                (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
            bar.advance(task, len(chunk))
    done = sum(len(c) for c in todo)
    console.print(f"restored {done} image(s) to {out}; {len(failed)} skipped")
    if failed:
        raise typer.Exit(1)


def _parse_or_exit(spec: str):
    try:
        return parse_spec(spec)
    except RestorationError as e:
        console.print(f"[red]bad --degradation:[/red] {e}")
        raise typer.Exit(2) from None


def _register_site_daemon() -> None:
    """`festa restore serve`: the site daemon lives in `festa.client.service` and adds itself here."""
    from festa.client.service.cli import register

    register(app)


_register_site_daemon()


if __name__ == "__main__":
    configure_process()
    app()
