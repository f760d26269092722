"""`festa export`: a model as plain files, for use outside festa's federation.

Layout of an export folder:

    model.json                   format, model sizes, tasks, class and box-class names
    body.safetensors             the shared transformer body (one for every task)
    <task>/head.safetensors      that task's head (image -> tokens)
    <task>/tail.safetensors      that task's tail (tokens -> output)

Loading needs torch, timm and safetensors (and festa's `shared` model code): no Flower, no
body service, no server.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from festa.shared.config import ModelConfig
from festa.shared.inference.trained_model import (
    EXPORT_CONFIG,
    ModelLoadError,
    TrainedModel,
    build_trained_model,
    check_box_coding,
)

EXPORT_FORMAT = "festa-export"
EXPORT_VERSION = 1


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def export_model(model: TrainedModel, out_dir: str | Path) -> Path:
    """Write `model` into `out_dir` (created); returns the path of its `model.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save(model.body.state_dict(), out / "body.safetensors")
    files: dict[str, dict[str, str]] = {}
    for name, task_model in model.tasks.items():
        (out / name).mkdir(exist_ok=True)
        _save(task_model.head.state_dict(), out / name / "head.safetensors")
        _save(task_model.tail.state_dict(), out / name / "tail.safetensors")
        files[name] = {"head": f"{name}/head.safetensors", "tail": f"{name}/tail.safetensors"}
    config = model.config.model_copy(
        update={"class_names": model.class_names, "box_class_names": model.box_class_names}
    )
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": config.model_dump(mode="json"),
        "tasks": list(model.tasks),
        "class_names": list(model.class_names),
        "box_class_names": list(model.box_class_names),
        "body": "body.safetensors",
        "files": files,
        "data_source": model.data_source,
        "exported_from": model.source,
    }
    path = out / EXPORT_CONFIG
    path.write_text(json.dumps(meta, indent=2))
    return path


def load_exported(export_dir: str | Path) -> TrainedModel:
    """The model in an export folder, built with timm modules on CPU, in eval mode."""
    root = Path(export_dir)
    try:
        meta = json.loads((root / EXPORT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{root}: unreadable {EXPORT_CONFIG} ({exc})") from exc
    if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
        raise ModelLoadError(
            f"{root}: not a {EXPORT_FORMAT} v{EXPORT_VERSION} folder "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    check_box_coding(meta["model"], meta["files"], str(root))
    config = ModelConfig.model_validate(meta["model"])
    states = {}
    for name, parts in meta["files"].items():
        head = load_file(str(root / parts["head"]))
        tail = load_file(str(root / parts["tail"]))
        states[name] = {f"head.{k}": v for k, v in head.items()} | {
            f"tail.{k}": v for k, v in tail.items()
        }
    body = load_file(str(root / meta["body"]))
    return build_trained_model(config, body, states, str(root), meta.get("data_source", ""))
