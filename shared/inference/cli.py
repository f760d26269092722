"""`festa evaluate`, `festa predict` and `festa export` (merged into the top-level command)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False)
console = Console()

MODEL_HELP = "a federated run folder (or its checkpoint), a train-central run, or an export folder"


def _load(path: Path):
    from festa.shared.inference.trained_model import ModelLoadError, load_trained_model

    try:
        return load_trained_model(path)
    except ModelLoadError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def _cell(metric: dict[str, Any] | None) -> str:
    if not metric:
        return "-"
    if "ci95" not in metric:
        return f"{metric['value']:.3f}"
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def report_table(report: dict[str, Any]) -> Table:
    """Rows task x (all sites, each site): n and every metric with its 95 % interval."""
    table = Table(
        title=f"evaluation of {report['model']} ({report['bootstrap']} bootstrap resamples)"
    )
    for col in ("task", "site", "n", "metric", "value [95% CI]"):
        table.add_column(col)
    for task, entry in report["tasks"].items():
        if "overall" not in entry:
            table.add_row(task, "-", "0", "-", entry.get("note", ""))
            continue
        groups = [("all", entry["overall"]), *entry["sites"].items()]
        for site, scores in groups:
            for key in sorted(k for k in scores if k != "n"):
                table.add_row(task, site, str(scores["n"]), key, _cell(scores[key]))
    return table


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    data: Annotated[
        str, typer.Option(help="'phantoms' or a folder with manifest.csv (like cxr-open)")
    ] = ...,  # type: ignore[assignment]
    split: Annotated[str, typer.Option(help="manifest split to score, or 'all'")] = "val",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95% CI")] = 200,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
) -> None:
    """Metrics per task and per site, with bootstrap 95 % intervals."""
    from festa.shared.inference.evaluation import evaluate_model, evaluation_data

    model = _load(run)
    try:
        dataset = evaluation_data(model, data, split)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if len(dataset) == 0:
        console.print(f"[red]error:[/] no images in split {split!r} of {data}")
        raise typer.Exit(2)
    report = evaluate_model(model, dataset, bootstrap=bootstrap, seed=seed)
    report.update(data=data, split=split, skipped_files=[vars(s) for s in dataset.skipped])
    console.print(report_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")


@app.command("predict")
def predict_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
    inputs: Annotated[
        Path, typer.Argument(metavar="IMAGE_OR_FOLDER", help="PNG/JPEG/DICOM file or folder")
    ],
    out: Annotated[Path, typer.Option(help="folder for the JSON and overlay PNGs")] = ...,  # type: ignore[assignment]
    min_score: Annotated[float, typer.Option(help="lowest box score kept")] = 0.3,
) -> None:
    """Class probabilities, lung-mask overlay, drawn boxes and one JSON per image."""
    from festa.shared.inference.prediction import input_files, predict_files

    if not inputs.exists():
        console.print(f"[red]error:[/] {inputs}: no such file or folder")
        raise typer.Exit(2)
    model = _load(model_path)
    results = predict_files(model, input_files(inputs), out, min_score)
    failed = [r for r in results if r.error]
    for r in failed:
        console.print(f"[yellow]skipped {r.path}:[/] {r.error}")
    console.print(f"{len(results) - len(failed)} of {len(results)} images predicted -> {out}")
    if results and len(failed) == len(results):
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help=MODEL_HELP)],
    out: Annotated[Path, typer.Option(help="export folder")] = ...,  # type: ignore[assignment]
) -> None:
    """Write each task's head, the body and each tail as safetensors, plus model.json."""
    from festa.shared.inference.export import export_model

    path = export_model(_load(run), out)
    console.print(
        f"exported -> {path.parent} (load with festa.shared.inference.export.load_exported)"
    )
