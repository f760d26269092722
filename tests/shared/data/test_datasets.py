import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from festa.shared.data.datasets import collate, folder_dataset, phantom_dataset


def test_phantom_dataset_samples_and_collate():
    ds = phantom_dataset(10, size=32, seed=0)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 32, 32)
    assert len(batch["boxes"]) == 4 and batch["boxes"][0].shape[1] == 4


def test_reads_cxr_open_as_is(cxr_open_dir):
    ds = folder_dataset(cxr_open_dir, size=32, split="val")
    assert len(ds) == 246 and not ds.skipped
    assert set(ds.class_names) == {
        "covid-19",
        "normal",
        "other",
        "pneumonia-bacterial",
        "pneumonia-viral",
    }
    assert {s["site"] for s in ds.samples} >= {"hannover", "kermany"}
    with_mask = [s for s in ds.samples if s["mask"] is not None]
    assert with_mask and all(s["mask"].shape == (1, 32, 32) for s in with_mask)
    boxes = [s["boxes"] for s in ds.samples if len(s["boxes"])]
    assert boxes and all(float(b.max()) <= 32.0 + 1e-4 for b in boxes)


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_bad_files_are_skipped_with_a_reason_and_nothing_is_modified(tmp_path, cxr_open_dir):
    images = tmp_path / "images"
    images.mkdir()
    good = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    Image.fromarray(good).save(images / "good.png")
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image")
    full = (images / "good.png").read_bytes()
    (images / "truncated.png").write_bytes(full[: len(full) // 2])
    shutil.copy(cxr_open_dir / "dicom" / "RG1_UNCR.dcm", images / "chest.dcm")
    rows = ["id,file,site,finding,split"] + [
        f"{n},images/{n}.{ext},siteA,normal,train"
        for n, ext in [
            ("good", "png"),
            ("empty", "png"),
            ("text", "png"),
            ("truncated", "png"),
            ("chest", "dcm"),
        ]
    ]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    before = _digest(tmp_path)

    ds = folder_dataset(tmp_path, size=32)

    assert sorted(s["id"] for s in ds.samples) == ["chest", "good"]
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in ds.skipped)}
    assert set(reasons) == {"empty.png", "text.png", "truncated.png"}
    assert all(reasons.values())
    assert _digest(tmp_path) == before


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        folder_dataset(tmp_path)
