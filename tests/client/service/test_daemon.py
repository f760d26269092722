"""A real daemon process fed a folder of good and broken files, then driven over HTTP."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from festa.client.service.restored_index import RestoredIndex
from festa.shared.data.phantoms import phantom_images

from .conftest import (
    API_KEY,
    REPO_ROOT,
    broken_files,
    free_port,
    good_pngs,
    journal_status,
    png_bytes,
    sha256,
    write_site,
)

ENGINE_KEYS = (
    "method",
    "degradation",
    "params",
    "model_id",
    "model_sha256",
    "seed",
    "nfe",
    "residual",
    "seconds",
)


def _assert_complete_provenance(record: dict, sha: str, source_name: str) -> None:
    assert record["input_sha256"] == sha
    assert record["source_name"] == source_name
    assert record["site"] == "test-site"
    for key in ("finished_at", "submitted_at", "restored_png_sha256", "input", "degradation"):
        assert key in record, key
    missing = [k for k in ENGINE_KEYS if k not in record["restoration"]]
    assert not missing, f"restoration provenance lacks {missing}"
    assert record["restoration"]["seed"] == 0


@pytest.mark.slow
def test_daemon_restores_good_files_quarantines_bad_ones_and_serves_the_api(
    tmp_path: Path, model_dir: Path, image_size: int, cxr_open_dir: Path, daemon_factory
) -> None:
    port = free_port("127.0.0.2")
    toml = write_site(
        tmp_path,
        model_dir,
        http={"enabled": True, "host": "127.0.0.2", "port": port, "api_key": API_KEY},
    )
    incoming = tmp_path / "incoming"
    real_dicom = cxr_open_dir / "dicom" / "RG1_UNCR.dcm"
    good = good_pngs(incoming, 3)
    rgb = np.stack([phantom_images(1, 64, seed=3)[0]] * 3, axis=-1)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(incoming / "rgb.jpg", quality=95)
    good.append(incoming / "rgb.jpg")
    shutil.copy(real_dicom, incoming / "RG1_UNCR.dcm")
    good.append(incoming / "RG1_UNCR.dcm")
    (incoming / "sub").mkdir()
    shutil.copy(good[0], incoming / "sub" / "same_as_first.png")  # same content, other name
    expected_bad = broken_files(incoming, real_dicom)
    originals = {p: (sha256(p), p.stat().st_mtime_ns) for p in incoming.rglob("*") if p.is_file()}
    distinct = {sha for sha, _ in originals.values()}

    daemon = daemon_factory(toml).start()
    state = tmp_path / "state"
    daemon.wait_for(
        "every input restored or quarantined",
        lambda: (
            len(journal_status(state)) == len(distinct)
            and all(s in ("restored", "quarantined") for s in journal_status(state).values())
        ),
        timeout=120,
    )

    # every good file: a 16-bit PNG at the prior's size plus a complete provenance record
    with RestoredIndex(state) as index:
        for path in good:
            hit = index.lookup(path)
            assert hit is not None, f"{path.name} not restored: {index.why_not(path)}"
            png, record = hit
            _assert_complete_provenance(record, sha256(path), path.name)
            with Image.open(png) as im:
                assert im.mode == "I;16" and im.size == (image_size, image_size)
            assert record["restored_png_sha256"] == sha256(png)
        dicom_record = index.lookup(incoming / "RG1_UNCR.dcm")[1]
        assert dicom_record["input"]["format"] == "dicom"
        assert dicom_record["input"]["dicom"]["photometric_interpretation"] == "MONOCHROME1"
        assert dicom_record["input"]["shape"] == [1955, 1841] and dicom_record["resized"]
        assert index.counts()["restored"] == len(good)
        assert index.counts()["quarantined"] == len(expected_bad)
        assert index.counts()["pending"] == 0

    # every broken file: a byte-identical copy in quarantine with a reason of the right kind
    quarantine = tmp_path / "quarantine"
    for name, kind in expected_bad.items():
        sha = sha256(incoming / name)
        reason_file = quarantine / f"{sha[:12]}-{name}.reason.json"
        assert reason_file.exists(), f"{name} not quarantined"
        reason = json.loads(reason_file.read_text())
        assert reason["kind"] == kind, (name, reason)
        assert reason["reason"] and reason["input_sha256"] == sha
        assert (quarantine / f"{sha[:12]}-{name}").read_bytes() == (incoming / name).read_bytes()
        assert (quarantine / f"{sha[:12]}-{name}.reason.txt").read_text().strip() == reason[
            "reason"
        ]
    restored_files = sorted((tmp_path / "restored").iterdir())
    assert len(restored_files) == 2 * len(good)  # the duplicate was restored once

    # the originals were only read
    for path, (digest, mtime) in originals.items():
        assert path.exists() and sha256(path) == digest and path.stat().st_mtime_ns == mtime

    # identifying DICOM tags appear in no output, log or journal (quarantined copies are inputs)
    ds = pydicom.dcmread(real_dicom, stop_before_pixels=True)
    secrets = [str(ds.PatientName).encode(), str(ds.PatientID).encode()]
    quarantined_copies = {quarantine / f"{sha256(incoming / n)[:12]}-{n}" for n in expected_bad}
    scanned = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(incoming) and p not in quarantined_copies
    ]
    assert any(p.name == "service.log" for p in scanned)
    for path in scanned:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} leaked into {path}"

    # ---- HTTP API on 127.0.0.2 with a key --------------------------------------------------
    base = f"http://127.0.0.2:{port}"
    auth = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/health").status_code == 401  # no key
        assert (
            client.get("/health", headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
        )
        assert client.post("/jobs", content=b"x", headers={"X-API-Key": "nope"}).status_code == 401
        health = client.get("/health", headers=auth).json()
        assert health["site"] == "test-site" and health["status"] == "ok"
        assert "/jobs" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200

        upload = png_bytes(phantom_images(1, 64, seed=42)[0])
        reply = client.post("/jobs", params={"filename": "api.png"}, content=upload, headers=auth)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        assert job_id == __import__("hashlib").sha256(upload).hexdigest()
        assert reply.json()["duplicate"] is False
        deadline = time.monotonic() + 60
        while client.get(f"/jobs/{job_id}", headers=auth).json()["status"] not in (
            "restored",
            "quarantined",
        ):
            assert time.monotonic() < deadline, "API job did not finish"
            time.sleep(0.2)
        assert client.get(f"/jobs/{job_id}", headers=auth).json()["status"] == "restored"
        image = client.get(f"/jobs/{job_id}/image", headers=auth)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (image_size, image_size)
        record = client.get(f"/jobs/{job_id}/provenance", headers=auth).json()
        _assert_complete_provenance(record, job_id, "api.png")
        assert (
            record["restored_png_sha256"] == __import__("hashlib").sha256(image.content).hexdigest()
        )

        again = client.post("/jobs", params={"filename": "again.png"}, content=upload, headers=auth)
        assert again.json()["job_id"] == job_id and again.json()["duplicate"] is True
        metrics = client.get("/metrics", headers=auth).json()
        assert metrics["restored"] == len(good) + 1 and metrics["pending"] == 0
        assert metrics["quarantined"] == len(expected_bad)

        bad = client.post("/jobs", params={"filename": "junk.png"}, content=b"junk", headers=auth)
        bad_id = bad.json()["job_id"]
        daemon.wait_for(
            "API junk quarantined",
            lambda: journal_status(state).get(bad_id) == "quarantined",
        )
        listed = {q["job_id"]: q for q in client.get("/quarantine", headers=auth).json()}
        assert listed[bad_id]["reason_kind"] == "not_an_image"
        assert len(listed) == len(expected_bad) + 1
        assert client.get(f"/jobs/{bad_id}/image", headers=auth).status_code == 409
        assert client.get(f"/jobs/{'0' * 64}", headers=auth).status_code == 404
    assert daemon.stop() == 0
    assert len(list((tmp_path / "restored").glob("*.png"))) == len(good) + 1


def test_refuses_to_start_beyond_localhost_without_a_key(tmp_path: Path, model_dir: Path) -> None:
    toml = write_site(tmp_path, model_dir, http={"enabled": True, "host": "0.0.0.0", "port": 1})
    done = subprocess.run(
        [sys.executable, "-m", "festa.client.service.cli", "serve", "--site", str(toml)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "http" in done.stderr and "api_key" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing started
