"""`festa predict`: one model's answers for images, as files a person can open.

For each readable image (PNG, JPEG or DICOM, read by `festa.shared.data.imageio.read_image`)
it writes, beside each other in the output folder and named after the input file:
`<name>.json` (class probabilities, lung-mask area, boxes), `<name>.lungs.png` (the lung mask
over the image) and `<name>.boxes.png` (the boxes drawn on it), each at the image's own size.
An unreadable file gets `<name>.json` with its reason and the folder goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from festa.shared.data.datasets import resize
from festa.shared.data.imageio import ImageReadError, read_image
from festa.shared.inference.trained_model import TrainedModel
from festa.shared.tasks.detection import decode

BOX_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120))


@dataclass
class PredictionResult:
    """What happened to one input: the JSON written, and the reason when it failed."""

    path: Path
    json_path: Path
    error: str | None = None


def input_files(path: str | Path) -> list[Path]:
    """`path` itself, or every file in the folder `path` (sorted, hidden files left out)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def _gray_rgb(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")


def _mask_overlay(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The image in gray with the mask tinted green (at the image's size)."""
    rgb = np.asarray(_gray_rgb(image)).astype(np.float32)
    tint = np.array([0, 255, 0], dtype=np.float32)
    rgb[mask] = 0.6 * rgb[mask] + 0.4 * tint
    return Image.fromarray(rgb.round().astype(np.uint8))


def predict_image(
    model: TrainedModel, image: np.ndarray, min_score: float = 0.3
) -> tuple[dict[str, Any], dict[str, tuple[str, Image.Image]]]:
    """image `[H, W]` in [0, 1] -> (JSON-ready results per task, (file suffix, overlay image)
    per task that draws one)."""
    h, w = image.shape
    size = model.config.image_size
    batch = torch.from_numpy(resize(image, size)).reshape(1, 1, size, size)
    results: dict[str, Any] = {}
    overlays: dict[str, tuple[str, Image.Image]] = {}
    if "classification" in model.tasks:
        probs = torch.softmax(model.outputs("classification", batch).float(), dim=1)[0]
        names = model.class_names
        results["classification"] = {
            "probabilities": {n: float(p) for n, p in zip(names, probs.tolist(), strict=True)},
            "predicted": names[int(probs.argmax())],
        }
    if "segmentation" in model.tasks:
        logits = model.outputs("segmentation", batch)[0, 0].float().numpy()
        small = (logits > 0).astype(np.float32)
        mask = _resize_to(small, h, w) > 0.5
        overlays["segmentation"] = ("lungs", _mask_overlay(image, mask))
        results["segmentation"] = {"lung_fraction": float(mask.mean())}
    if "detection" in model.tasks:
        raw = model.outputs("detection", batch)
        boxes, scores, labels = decode(raw, float(model.config.patch_size), min_score)[0]
        sx, sy = w / size, h / size
        found = []
        drawn = _gray_rgb(image)
        draw = ImageDraw.Draw(drawn)
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
            name = model.box_class_names[label]
            found.append({"label": name, "score": float(score), "box_xyxy": [x0, y0, x1, y1]})
            colour = BOX_COLOURS[label % len(BOX_COLOURS)]
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, round(max(h, w) / 128)))
            draw.text((x0 + 2, y0 + 1), f"{name} {score:.2f}", fill=colour)
        overlays["detection"] = ("boxes", drawn)
        results["detection"] = {"min_score": min_score, "boxes": found}
    return results, overlays


def _resize_to(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(image)


def predict_files(
    model: TrainedModel, inputs: list[Path], out_dir: str | Path, min_score: float = 0.3
) -> list[PredictionResult]:
    """Predict every file of `inputs` into `out_dir`; a file that cannot be read gets a JSON
    with its reason, and the others go on."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in inputs:
        json_path = out / f"{path.name}.json"
        record: dict[str, Any] = {"input": str(path), "model": model.source}
        try:
            image = read_image(path)
        except ImageReadError as exc:
            record.update({"error": exc.reason, "error_kind": exc.kind})
            json_path.write_text(json.dumps(record, indent=2))
            results.append(PredictionResult(path, json_path, exc.reason))
            continue
        tasks, overlays = predict_image(model, image, min_score)
        record["size_hw"] = list(image.shape)
        record.update(tasks)
        for task, (suffix, picture) in overlays.items():
            file = out / f"{path.name}.{suffix}.png"
            picture.save(file)
            record[task]["overlay"] = file.name
        json_path.write_text(json.dumps(record, indent=2))
        results.append(PredictionResult(path, json_path))
    return results
