"""Fixtures every test area shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from festa.shared.runtime import configure_process

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach for a model hub, and run one torch thread per process: tests start several
# processes (servers, clients) on two cores, and OpenMP spin-waiting under oversubscription is
# ~10x slower than single-threaded kernels here.
configure_process(threads=1)


def _cxr_open_dir() -> Path | None:
    env = os.environ.get("FESTA_CXR_OPEN")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "cxr-open")
    for path in candidates:
        if (path / "manifest.csv").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def cxr_open_dir() -> Path:
    """The real open CXR set beside the checkout (`../shared/data/cxr-open`)."""
    path = _cxr_open_dir()
    if path is None:
        pytest.skip(
            "cxr-open data not found: expected ../shared/data/cxr-open beside the checkout "
            "or FESTA_CXR_OPEN pointing at it"
        )
    return path


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


def write_cxr_folder(root: Path, rows: list[dict], size: int = 32) -> Path:
    """A folder laid out like cxr-open: images/, masks/, manifest.csv, from phantoms.

    Each row gives `site`, `finding`, `split` and optionally `patient_id`, `mask` (bool);
    every image with a mask gets its lung boxes too.
    """
    import csv

    import numpy as np
    from PIL import Image

    from festa.shared.data.phantoms import make_phantom

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    fields = [
        "id",
        "file",
        "site",
        "patient_id",
        "finding",
        "lung_mask",
        "lung_boxes_xyxy",
        "split",
    ]
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for i, row in enumerate(rows):
            p = make_phantom(i, size, seed=7)
            ident = f"img{i:04d}"
            Image.fromarray((p.image * 255).round().astype(np.uint8)).save(
                root / "images" / f"{ident}.png"
            )
            mask_rel, boxes = "", ""
            if row.get("mask", True):
                mask_rel = f"masks/{ident}_lung.png"
                Image.fromarray(p.mask.astype(np.uint8) * 255).save(root / mask_rel)
                lungs = p.boxes[p.box_labels == 0]
                boxes = ";".join(" ".join(f"{v:.0f}" for v in b) for b in lungs)
            writer.writerow(
                {
                    "id": ident,
                    "file": f"images/{ident}.png",
                    "site": row["site"],
                    "patient_id": row.get("patient_id", ident),
                    "finding": row["finding"],
                    "lung_mask": mask_rel,
                    "lung_boxes_xyxy": boxes,
                    "split": row["split"],
                }
            )
    return root


@pytest.fixture
def cxr_folder(tmp_path):
    """Factory: `cxr_folder(rows)` writes a tiny cxr-open-like folder and returns its path."""
    counter = iter(range(1000))
    return lambda rows, size=32: write_cxr_folder(tmp_path / f"data{next(counter)}", rows, size)
