"""Datasets of CXR samples: built-in phantoms, or a folder with a manifest CSV.

A sample is a dict: ``image`` float32 tensor ``[1, H, W]`` in [0, 1]; ``label`` int (-1 when
unknown); ``mask`` float32 ``[1, H, W]`` or None; ``boxes`` float32 ``[K, 4]`` (x0 y0 x1 y1, px)
and ``box_labels`` int64 ``[K]`` (K may be 0); ``site``, ``patient`` and ``id`` strings. Datasets load
everything into memory once (tens of MB at 64 px), so bad files are found and reported up front.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from festa.shared.config import ModelConfig
from festa.shared.data.imageio import ImageReadError, read_image
from festa.shared.data.phantoms import BOX_CLASS_NAMES, CLASS_NAMES, make_phantom

log = logging.getLogger(__name__)

Sample = dict[str, Any]


@dataclass
class SkippedFile:
    path: str
    reason: str


class CXRDataset(Dataset):
    """In-memory list of samples with class and box-class names."""

    def __init__(
        self,
        samples: list[Sample],
        class_names: Sequence[str],
        box_class_names: Sequence[str],
        skipped: list[SkippedFile] | None = None,
    ):
        self.samples = samples
        self.class_names = tuple(class_names)
        self.box_class_names = tuple(box_class_names)
        self.skipped = skipped or []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s["label"] for s in self.samples], dtype=np.int64)

    @property
    def sites(self) -> list[str]:
        return [s["site"] for s in self.samples]

    @property
    def label_names(self) -> set[str]:
        """The class names that occur among this dataset's labels."""
        return {self.class_names[label] for label in self.labels if label >= 0}

    def subset(
        self, indices: Sequence[int], class_names: Sequence[str] | None = None
    ) -> CXRDataset:
        """The samples at `indices` (shared, not copied), relabelled onto `class_names` when given:
        a label whose name is not among them becomes -1 (no classification label)."""
        picked = [self.samples[int(i)] for i in indices]
        if class_names is None:
            return CXRDataset(picked, self.class_names, self.box_class_names, self.skipped)
        names = tuple(class_names)
        relabelled = []
        for sample in picked:
            old = sample["label"]
            name = self.class_names[old] if old >= 0 else None
            relabelled.append({**sample, "label": names.index(name) if name in names else -1})
        return CXRDataset(relabelled, names, self.box_class_names, self.skipped)


def with_class_names(
    config: ModelConfig, class_names: Sequence[str], box_class_names: Sequence[str]
) -> ModelConfig:
    """`config` with these class and box-class names, and their counts."""
    return config.model_copy(
        update={
            "class_names": tuple(class_names),
            "num_classes": len(class_names),
            "box_class_names": tuple(box_class_names),
            "num_box_classes": len(box_class_names),
        }
    )


def model_for_data(config: ModelConfig, dataset: CXRDataset) -> ModelConfig:
    """`config` with its class and box-class names (and counts) taken from `dataset`."""
    return with_class_names(config, dataset.class_names, dataset.box_class_names)


def phantom_dataset(n: int, size: int = 64, seed: int = 0, site: str = "phantom") -> CXRDataset:
    """`n` phantoms of set `seed` at `size` px."""
    samples = []
    for i in range(n):
        p = make_phantom(i, size, seed)
        samples.append(
            {
                "image": torch.from_numpy(p.image).unsqueeze(0),
                "label": p.label,
                "mask": torch.from_numpy(p.mask.astype(np.float32)).unsqueeze(0),
                "boxes": torch.from_numpy(p.boxes),
                "box_labels": torch.from_numpy(p.box_labels),
                "site": site,
                "patient": f"phantom-{seed}-{i}",
                "id": f"phantom-{seed}-{i}",
            }
        )
    return CXRDataset(samples, CLASS_NAMES, BOX_CLASS_NAMES)


@dataclass
class ManifestSpec:
    """Column names of a manifest CSV (defaults match `cxr-open`)."""

    file: str = "file"
    label: str = "finding"
    site: str = "site"
    split: str = "split"
    mask: str = "lung_mask"
    boxes: str = "lung_boxes_xyxy"
    id: str = "id"
    patient: str = "patient_id"
    class_names: tuple[str, ...] | None = None  # None: sorted set of labels in the manifest
    extra: dict[str, str] = field(default_factory=dict)


def folder_dataset(
    root: str | Path,
    size: int = 64,
    split: str | None = None,
    manifest: str = "manifest.csv",
    spec: ManifestSpec | None = None,
    sites: Sequence[str] | None = None,
) -> CXRDataset:
    """Images listed in `root/manifest`, resized to `size` px; unreadable files are skipped.

    Boxes are read as ``x0 y0 x1 y1;...`` in the image's own pixel coordinates and rescaled;
    every box is class ``lung`` (box-class 0).
    """
    root = Path(root)
    spec = spec or ManifestSpec()
    manifest_path = root / manifest
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest at {manifest_path}")
    with manifest_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    class_names = spec.class_names or tuple(sorted({r[spec.label] for r in rows if r[spec.label]}))
    rows = [r for r in rows if (split is None or r.get(spec.split) == split)]
    if sites is not None:
        rows = [r for r in rows if r.get(spec.site) in set(sites)]
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    for row in rows:
        path = root / row[spec.file]
        try:
            image = read_image(path)
            mask = _read_mask(root, row.get(spec.mask), size)
        except ImageReadError as exc:
            log.warning("skipping %s: %s", path, exc.reason)
            skipped.append(SkippedFile(str(path), exc.reason))
            continue
        h, w = image.shape
        boxes = _parse_boxes(row.get(spec.boxes, ""), sx=size / w, sy=size / h)
        label_text = row.get(spec.label, "")
        samples.append(
            {
                "image": torch.from_numpy(resize(image, size)).unsqueeze(0),
                "label": class_names.index(label_text) if label_text in class_names else -1,
                "mask": mask,
                "boxes": boxes,
                "box_labels": torch.zeros(len(boxes), dtype=torch.int64),
                "site": row.get(spec.site, "") or "unknown",
                "patient": row.get(spec.patient) or row.get(spec.id) or path.stem,
                "id": row.get(spec.id) or path.stem,
                "path": str(path),
            }
        )
    return CXRDataset(samples, class_names, ("lung",), skipped)


def resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """`image` [H, W] resized to `size` x `size` (bilinear, or nearest for masks)."""
    if image.shape == (size, size):
        return image.astype(np.float32)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(image.astype(np.float32)).resize((size, size), resample))


def _read_mask(root: Path, rel: str | None, size: int) -> torch.Tensor | None:
    if not rel:
        return None
    mask = resize(read_image(root / rel), size, nearest=True)
    return torch.from_numpy((mask > 0.5).astype(np.float32)).unsqueeze(0)


def _parse_boxes(text: str, sx: float, sy: float) -> torch.Tensor:
    boxes = []
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        x0, y0, x1, y1 = (float(v) for v in part.split())
        boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def collate(samples: list[Sample]) -> dict[str, Any]:
    """Stack a list of samples into a batch (boxes stay per-image lists)."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "boxes": [s["boxes"] for s in samples],
        "box_labels": [s["box_labels"] for s in samples],
        "site": [s["site"] for s in samples],
        "id": [s["id"] for s in samples],
    }
    if all(s["mask"] is not None for s in samples):
        batch["mask"] = torch.stack([s["mask"] for s in samples])
    return batch


def load_dataset(source: str, split: str, size: int, n: int, seed: int) -> CXRDataset:
    """`phantoms` (n images; split `val` uses a disjoint seed) or a folder with a manifest."""
    if source == "phantoms":
        return phantom_dataset(n, size, seed=seed if split == "train" else seed + 100_003)
    return folder_dataset(source, size=size, split=split)
