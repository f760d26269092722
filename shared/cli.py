"""The `festa` command.

`shared` must not import `server` or `client`, so sub-command groups that live there
(`festa restore`, `festa server`, `festa console`, ...) are found through the
`festa.commands` entry points that pyproject.toml declares.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from festa.shared.config import (
    CentralConfig,
    ConfigError,
    DataConfig,
    check_task_names,
    load_toml,
    model_preset,
    validate,
)
from festa.shared.runtime import configure_process

app = typer.Typer(
    name="festa",
    help="Federated split learning for chest X-ray AI, with on-site diffusion restoration.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="log every service event")
    ] = False,
) -> None:
    """Federated split learning for chest X-ray AI, with on-site diffusion restoration."""
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:  # libraries (Flower) set their own logger levels; filter here
        handler.setLevel(level)


def _tasks(value: str) -> list[str]:
    try:
        return check_task_names([t.strip() for t in value.split(",") if t.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("train-central")
def train_central_cmd(
    out: Annotated[
        Path, typer.Option(help="output folder for summary.json, metrics.jsonl, checkpoint")
    ] = Path("runs/central"),
    data: Annotated[
        str, typer.Option(help="'phantoms' or a folder with manifest.csv")
    ] = "phantoms",
    tasks: Annotated[
        str | None, typer.Option(help="comma-separated tasks (default: every registered task)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with a CentralConfig")] = None,
    preset: Annotated[
        str,
        typer.Option(help="model size: tiny (64 px), small128 (128 px) or base (ViT-B/16, 224 px)"),
    ] = "tiny",
    epochs: Annotated[int | None, typer.Option(help="training epochs")] = None,
    train_size: Annotated[int | None, typer.Option(help="phantom images for training")] = None,
    val_size: Annotated[int | None, typer.Option(help="phantom images for validation")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per batch")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Train the split model centrally on pooled data (the yardstick for federated runs)."""
    from festa.shared.train.central import train_central

    try:
        if config is not None:
            cfg = load_toml(config, CentralConfig)
        else:
            cfg = CentralConfig(model=model_preset(preset))
        updates: dict = {"seed": seed, "device": device}
        if tasks is not None:
            updates["tasks"] = _tasks(tasks)
        data_cfg = cfg.data.model_dump() | {"source": data}
        if train_size is not None:
            data_cfg["train_size"] = train_size
        if val_size is not None:
            data_cfg["val_size"] = val_size
        if batch_size is not None:
            updates["optim"] = cfg.optim.model_copy(update={"batch_size": batch_size})
        updates["data"] = validate(DataConfig, data_cfg, "--data")
        if epochs is not None:
            updates["epochs"] = epochs
        cfg = validate(CentralConfig, cfg.model_dump() | updates, "train-central")
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    summary = train_central(cfg, out, console=console)
    console.print(f"final: {summary['primary']}  ({summary['wall_seconds']:.0f} s) -> {out}")


@app.command("phantoms")
def phantoms_cmd(
    out: Annotated[Path, typer.Option(help="PNG file for the grid")] = Path("phantoms.png"),
    size: Annotated[int, typer.Option(help="pixels per side")] = 128,
    rows: int = 2,
    cols: int = 6,
    seed: int = 0,
) -> None:
    """Save a grid of procedural CXR phantoms as a PNG."""
    import numpy as np
    from PIL import Image

    from festa.shared.data.phantoms import make_phantom

    grid = np.concatenate(
        [
            np.concatenate([make_phantom(r * cols + c, size, seed).image for c in range(cols)], 1)
            for r in range(rows)
        ],
        0,
    )
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(out)
    console.print(f"wrote {out}")


def _add_inference_commands() -> None:
    """`festa evaluate`, `festa predict` and `festa export` (they live in `festa.shared.inference`)."""
    from festa.shared.inference.cli import app as inference_app

    app.registered_commands.extend(inference_app.registered_commands)


def _load_plugins() -> None:
    """Attach every `festa.commands` entry point as a sub-command group."""
    for ep in sorted(entry_points(group="festa.commands"), key=lambda e: e.name):
        try:
            sub = ep.load()
        except Exception as exc:  # a missing optional part must not break the other commands
            reason = f"{type(exc).__name__}: {exc}"

            def unavailable(name: str = ep.name, why: str = reason) -> None:
                console.print(f"[red]'festa {name}' is unavailable in this installation:[/] {why}")
                raise typer.Exit(1)

            app.command(ep.name, help=f"(unavailable: {reason})")(unavailable)
            continue
        if ep.name.startswith("_"):
            app.registered_commands.extend(sub.registered_commands)
        else:
            app.add_typer(sub, name=ep.name)


def main() -> None:
    configure_process()  # before any sub-command group imports timm or diffusers
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _add_inference_commands()
    _load_plugins()
    app()


if __name__ == "__main__":
    main()
