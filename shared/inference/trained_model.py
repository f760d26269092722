"""A trained split model in one process: the body and each task's head and tail.

`load_trained_model` reads any of the three places a model lives: a federated run
(`runs/<ts>/`, its `checkpoints/latest.pt`, or one `round_NNN.pt`), a `festa train-central`
run (`checkpoint.pt`), or a folder written by `festa export` (`model.json` + safetensors).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from festa.shared.config import BOX_CODING, ModelConfig
from festa.shared.data.phantoms import BOX_CLASS_NAMES, CLASS_NAMES
from festa.shared.model.body import Body
from festa.shared.train.task_model import TaskModel

EXPORT_CONFIG = "model.json"


class ModelLoadError(ValueError):
    """A path holds no model festa can load; the message says what was looked for."""


@dataclass
class TrainedModel:
    """Body and per-task head/tail on one device, in eval mode.

    `source` names where it was loaded from; `data_source` is the training data
    (`phantoms` or a folder), so evaluation can default to the same kind of data.
    """

    config: ModelConfig
    body: Body
    tasks: dict[str, TaskModel]
    source: str
    data_source: str = "phantoms"

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names or CLASS_NAMES[: self.config.num_classes]

    @property
    def box_class_names(self) -> tuple[str, ...]:
        return self.config.box_class_names or BOX_CLASS_NAMES[: self.config.num_box_classes]

    @torch.no_grad()
    def outputs(self, task: str, images: torch.Tensor) -> Any:
        """images `[B, 1, H, W]` -> the task tail's raw output (logits, mask logits, box maps)."""
        model = self.tasks[task]
        return model.tail(self.body(model.head(images)))


def build_trained_model(
    config: ModelConfig,
    body_state: dict[str, torch.Tensor],
    task_states: dict[str, dict[str, torch.Tensor]],
    source: str,
    data_source: str = "phantoms",
) -> TrainedModel:
    """Modules built from `config`, loaded with the given weights (strict), in eval mode."""
    body = Body(config)
    body.load_state_dict(body_state)
    body.eval()
    tasks = {}
    for name, state in task_states.items():
        model = TaskModel.build(name, config)
        model.load_state_dict(state)
        model.train(False)
        tasks[name] = model
    return TrainedModel(config, body, tasks, source, data_source)


def check_box_coding(model: dict[str, Any], tasks: Iterable[str], where: str) -> None:
    """Refuse detection weights saved under another box coding (their boxes would decode
    shifted); `model` is the saved model config as a dict."""
    coding = model.get("box_coding", 1)  # saved before the key existed: coding 1
    if "detection" in tasks and coding != BOX_CODING:
        raise ModelLoadError(
            f"{where}: its detection tail encodes boxes with box coding {coding}, this festa "
            f"decodes coding {BOX_CODING} (see festa.shared.config.BOX_CODING); retrain the "
            "run, or evaluate it with the festa version that trained it"
        )


def _checkpoint_path(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "latest.pt", path / "checkpoint.pt"):
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{path}: no model here (looked for {EXPORT_CONFIG}, checkpoints/latest.pt of a "
        "federated run, checkpoint.pt of a train-central run)"
    )


def load_trained_model(path: str | Path) -> TrainedModel:
    """The model in a federated run, a train-central run or an export folder."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if (path / EXPORT_CONFIG).is_file():
        from festa.shared.inference.export import load_exported

        return load_exported(path)
    ckpt_path = _checkpoint_path(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ModelLoadError(f"{ckpt_path}: not a festa checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "body" not in ckpt or "config" not in ckpt:
        raise ModelLoadError(f"{ckpt_path}: not a festa checkpoint (no body/config)")
    config = ckpt["config"]
    tasks = ckpt.get("task_states", ckpt.get("tasks", {}))
    check_box_coding(config["model"], tasks, str(ckpt_path))
    model_config = ModelConfig.model_validate(config["model"])
    data_source = config.get("data", {}).get("source", "phantoms")
    body_state = ckpt["body"]
    if "task_states" in ckpt:  # federated: the FedAvg'd head/tail of each task
        states = ckpt["task_states"]
        body_state = body_state["body"]  # the body service's state also holds its optimizer
    elif "tasks" in ckpt:  # train-central
        states = ckpt["tasks"]
    else:
        raise ModelLoadError(f"{ckpt_path}: checkpoint holds no task weights")
    return build_trained_model(model_config, body_state, states, str(ckpt_path), data_source)
