"""evaluate / export / predict on real runs: a train-central run and a 1-round Flower simulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from festa.shared.config import CentralConfig, DataConfig, ModelConfig, OptimConfig
from festa.shared.inference.evaluation import evaluate_model, evaluation_data
from festa.shared.inference.export import export_model
from festa.shared.inference.prediction import input_files, predict_files
from festa.shared.inference.trained_model import ModelLoadError, load_trained_model
from festa.shared.train.central import train_central

REPO = Path(__file__).resolve().parents[3]
TINY = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
THREE = ("normal", "pneumonia-bacterial", "pneumonia-viral")


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "festa.shared.cli", *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _rows():
    rows = []
    for i in range(36):
        rows.append({"site": "a" if i % 2 else "b", "finding": THREE[i % 3], "split": "train"})
    for i in range(18):
        rows.append({"site": "a" if i % 2 else "b", "finding": THREE[i % 3], "split": "val"})
    return rows


@pytest.fixture
def central_run(tmp_path, cxr_folder):
    data = cxr_folder(_rows())
    cfg = CentralConfig(
        model=TINY,
        optim=OptimConfig(batch_size=12),
        data=DataConfig(source=str(data)),
        epochs=1,
    )
    train_central(cfg, tmp_path / "central")
    return tmp_path / "central", data


def test_evaluate_reports_each_task_and_site_with_intervals(central_run):
    run, data = central_run
    model = load_trained_model(run)
    assert model.class_names == THREE and model.config.num_classes == 3
    report = evaluate_model(model, evaluation_data(model, str(data), "val"), bootstrap=30)
    for task in ("classification", "segmentation", "detection"):
        entry = report["tasks"][task]
        assert entry["n"] == 18 and set(entry["sites"]) == {"a", "b"}
        primary = entry["overall"][entry["primary_metric"]]
        lo, hi = primary["ci95"]
        assert lo <= hi and 0.0 <= lo and hi <= 1.0
        assert entry["sites"]["a"]["n"] + entry["sites"]["b"]["n"] == 18
    # the same seed gives the same intervals
    again = evaluate_model(model, evaluation_data(model, str(data), "val"), bootstrap=30)
    assert again == report


def test_export_loads_in_a_fresh_process_without_flower_and_reproduces_evaluate(
    central_run, tmp_path
):
    run, data = central_run
    report_path = tmp_path / "run.json"
    cli("evaluate", str(run), "--data", str(data), "--bootstrap", "20", "--json", str(report_path))
    cli("export", str(run), "--out", str(tmp_path / "export"))
    export = tmp_path / "export"
    assert (export / "body.safetensors").is_file()
    for task in ("classification", "segmentation", "detection"):
        assert (export / task / "head.safetensors").is_file()
        assert (export / task / "tail.safetensors").is_file()
    script = f"""
import json, sys
from festa.shared.inference.export import load_exported
from festa.shared.inference.evaluation import evaluate_model, evaluation_data
model = load_exported({str(export)!r})
report = evaluate_model(model, evaluation_data(model, {str(data)!r}, "val"), bootstrap=20)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("flwr", "grpc", "ray"))
print(json.dumps({{"tasks": report["tasks"], "loaded": loaded}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["loaded"] == []  # no Flower, no gRPC, no Ray
    assert fresh["tasks"] == json.loads(report_path.read_text())["tasks"]


def test_predict_writes_outputs_per_image_and_reports_unreadable_files(central_run, tmp_path):
    run, data = central_run
    images = tmp_path / "inbox"
    images.mkdir()
    Image.open(data / "images" / "img0000.png").resize((48, 40)).save(images / "good.png")
    _write_dicom(images / "scan.dcm", np.asarray(Image.open(data / "images" / "img0001.png")))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (images / "empty.dcm").write_bytes(b"")
    model = load_trained_model(run)
    results = predict_files(model, input_files(images), tmp_path / "out")
    by_name = {r.path.name: r for r in results}
    assert by_name["broken.png"].error and by_name["empty.dcm"].error
    broken = json.loads((tmp_path / "out" / "broken.png.json").read_text())
    assert broken["error"] and "classification" not in broken
    for name, hw in (("good.png", [40, 48]), ("scan.dcm", [32, 32])):
        assert by_name[name].error is None
        record = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert record["size_hw"] == hw
        probs = record["classification"]["probabilities"]
        assert set(probs) == set(THREE) and abs(sum(probs.values()) - 1) < 1e-5
        lungs = Image.open(tmp_path / "out" / record["segmentation"]["overlay"])
        boxes = Image.open(tmp_path / "out" / record["detection"]["overlay"])
        assert lungs.size == boxes.size == (hw[1], hw[0])
        assert all(len(b["box_xyxy"]) == 4 for b in record["detection"]["boxes"])


def test_predict_cli_goes_on_past_an_unreadable_file(central_run, tmp_path):
    run, data = central_run
    images = tmp_path / "inbox"
    images.mkdir()
    (images / "a.png").write_bytes((data / "images" / "img0002.png").read_bytes())
    (images / "notes.txt").write_text("not an image")
    result = cli("predict", str(run), str(images), "--out", str(tmp_path / "out"))
    assert "1 of 2 images predicted" in result.stdout
    assert json.loads((tmp_path / "out" / "notes.txt.json").read_text())["error"]
    assert (tmp_path / "out" / "a.png.lungs.png").is_file()


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no model here"):
        load_trained_model(tmp_path)


def test_a_one_round_simulation_from_a_federation_file_evaluates_and_exports(tmp_path, cxr_folder):
    data = cxr_folder(_rows())
    fed = tmp_path / "fed.toml"
    fed.write_text(
        "".join(
            f'[[site]]\nid = "{sid}"\ntask = "{task}"\ndata = "{data}"\nsites = ["{src}"]\n'
            for sid, task, src in (
                ("cls-a", "classification", "a"),
                ("cls-b", "classification", "b"),
                ("seg-a", "segmentation", "a"),
            )
        )
    )
    config = tmp_path / "cfg.toml"
    config.write_text(
        "rounds = 1\nlocal_steps = 2\ndegrade = 'none'\nrestore = 'none'\n"
        "[model]\nimage_size = 32\npatch_size = 8\nembed_dim = 32\ndepth = 1\nnum_heads = 2\n"
        "[schedule]\nwarmup_rounds = 1\nfinetune_rounds = 0\n"
    )
    run = tmp_path / "run"
    cli(
        "simulate",
        "--config",
        str(config),
        "--federation",
        str(fed),
        "--out",
        str(run),
        "--store",
        str(tmp_path / "festa.db"),
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_classes"] == 3 and saved["clients"] == 3
    model = load_trained_model(run)
    assert set(model.tasks) == {"classification", "segmentation"}
    report = evaluate_model(model, evaluation_data(model, str(data), "val"), bootstrap=10)
    export_model(model, tmp_path / "export")
    exported = load_trained_model(tmp_path / "export")
    again = evaluate_model(exported, evaluation_data(exported, str(data), "val"), bootstrap=10)
    assert again["tasks"] == report["tasks"]
    assert report["tasks"]["segmentation"]["n"] == 18


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """A minimal uncompressed MONOCHROME2 DICOM file holding `pixels` (uint8)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_detection_weights_of_an_older_box_coding_are_refused(central_run, tmp_path):
    """A run or export saved before the box coding existed decodes shifted boxes under today's
    code: loading it is refused with the reason, while today's run still loads."""
    run, _ = central_run
    ckpt_path = run / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert "detection" in ckpt["tasks"] and ckpt["config"]["model"]["box_coding"] == 2
    export_dir = tmp_path / "export"
    export_model(load_trained_model(run), export_dir)

    del ckpt["config"]["model"]["box_coding"]  # as every checkpoint before 2026-12-08
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ModelLoadError, match="box coding 1"):
        load_trained_model(tmp_path / "old.pt")
    meta = json.loads((export_dir / "model.json").read_text())
    del meta["model"]["box_coding"]
    (export_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="box coding 1"):
        load_trained_model(export_dir)
    del ckpt["tasks"]["detection"]  # without detection weights, nothing decodes boxes
    torch.save(ckpt, tmp_path / "no_detection.pt")
    assert "detection" not in load_trained_model(tmp_path / "no_detection.pt").tasks
