"""The service in-process: config validation, duplicate intake, crash recovery from the journal,
and the trainer's RestoredIndex."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from festa.client.restoration.operators import parse_spec
from festa.client.service.cli import app
from festa.client.service.config import load_site_config
from festa.client.service.daemon import SiteService
from festa.client.service.restored_index import RestoredIndex, RestoredIndexError
from festa.shared.config import ConfigError
from festa.shared.data.phantoms import phantom_images

from .conftest import PHANTOM64, good_pngs, png_bytes, sha256, write_site


def _edit(toml: Path, old: str, new: str) -> Path:
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))
    return toml


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("batch_size = 4", "batch_size = 0", "restore.batch_size"),
        ("batch_size = 4", "batch_sise = 4", "restore.batch_sise"),
        ('method = "dps"', 'method = "auto"', "restore"),
        (
            'degradation = "noise:poisson:dose=2000,read=0.01"\nmethod = "dps"',
            'degradation = "auto"\nmethod = "cddb"',
            "bridges",
        ),
        (
            'degradation = "noise:poisson:dose=2000,read=0.01"',
            'degradation = "noise poisson"',
            "restore.degradation",
        ),
        ('restored = "restored"', 'restored = "incoming"', "folders.restored"),
        ('site_id = "test-site"', 'site_id = "bad site/../x"', "site_id"),
    ],
)
def test_bad_site_config_names_the_key(tmp_path: Path, model_dir: Path, old, new, named) -> None:
    toml = _edit(write_site(tmp_path, model_dir), old, new)
    with pytest.raises(ConfigError) as info:
        load_site_config(toml)
    assert named in str(info.value)


def test_api_key_is_required_beyond_localhost_only(tmp_path: Path, model_dir: Path) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::", "127.0.0.2"):
        toml = write_site(tmp_path, model_dir, http={"host": host})
        with pytest.raises(ConfigError, match="api_key"):
            load_site_config(toml)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert (
            load_site_config(write_site(tmp_path, model_dir, http={"host": host})).http.api_key
            is None
        )
    keyed = write_site(tmp_path, model_dir, http={"host": "0.0.0.0", "api_key": "k" * 20})
    assert load_site_config(keyed).http.api_key == "k" * 20


def test_serve_refuses_a_spec_the_method_cannot_solve(tmp_path: Path, model_dir: Path) -> None:
    toml = write_site(tmp_path, model_dir, degradation="blur:unknown")
    result = CliRunner().invoke(app, ["serve", "--site", str(toml)])
    assert result.exit_code == 2
    assert "blinddps" in result.output
    missing = CliRunner().invoke(app, ["serve", "--site", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output


@pytest.fixture
def service(tmp_path: Path, model_dir: Path) -> SiteService:
    toml = write_site(tmp_path / "site", model_dir, nfe=2, batch_size=8)
    return SiteService(load_site_config(toml))


def _drain(service: SiteService) -> None:
    while service.run_once():
        pass


def test_same_content_is_queued_and_restored_once(service: SiteService, tmp_path: Path) -> None:
    data = png_bytes(phantom_images(1, 64, seed=11)[0])
    first, created = service.submit_bytes(data, "a.png", "api")
    second, created_again = service.submit_bytes(data, "b.png", "api")
    assert created and not created_again and first.sha256 == second.sha256
    _drain(service)
    counts = service.metrics()
    assert counts["restored"] == 1 and counts["submissions"] == 2
    assert len(list(service.config.folders.restored.glob("*.png"))) == 1


def test_recovery_settles_interrupted_jobs_from_disk(service: SiteService) -> None:
    folders = service.config.folders
    paths = good_pngs(folders.incoming, 3, seed=12)
    _drain(service)
    shas = [sha256(p) for p in paths]
    before = {sha: (folders.restored / f"{sha}.json").read_bytes() for sha in shas}
    # as if the daemon died after writing a result but before the journal said so, and died
    # holding another job for the last allowed time
    db = sqlite3.connect(service.journal.path)
    db.execute("UPDATE jobs SET status = 'running' WHERE sha256 = ?", (shas[0],))
    db.execute(
        "UPDATE jobs SET status = 'running', attempts = 3, result_png = NULL WHERE sha256 = ?",
        (shas[1],),
    )
    db.commit()
    db.close()
    (folders.restored / f"{shas[1]}.json").unlink()
    (folders.restored / f".{shas[2]}.json.x.partial").write_text("half")
    service.recover()
    assert service.journal.get(shas[0]).status == "restored"
    assert (folders.restored / f"{shas[0]}.json").read_bytes() == before[shas[0]]  # not redone
    crashed = service.journal.get(shas[1])
    assert crashed.status == "quarantined" and crashed.reason_kind == "crashed"
    assert not (folders.restored / f"{shas[1]}.png").exists()  # uncommitted result removed
    assert not list(folders.restored.glob(".*.partial"))


def test_restored_index_reads_results_and_explains_misses(service: SiteService) -> None:
    folders = service.config.folders
    good = good_pngs(folders.incoming, 2, seed=13)
    (folders.incoming / "empty.png").write_bytes(b"")
    _drain(service)
    pending = png_bytes(phantom_images(1, 64, seed=14)[0])
    pending_job, _ = service.submit_bytes(pending, "later.png", "api")
    with RestoredIndex(folders.state) as index:
        png, record = index.lookup(good[0])
        assert png.is_file() and record["source_name"] == good[0].name
        assert index.lookup(sha256(good[1]))[1]["input_sha256"] == sha256(good[1])
        assert index.lookup(folders.incoming / "empty.png") is None
        assert index.why_not(folders.incoming / "empty.png").startswith(
            "quarantined: file is empty"
        )
        assert index.why_not(pending_job.sha256) == "restoration pending"
        assert index.why_not("0" * 64) == "not submitted to the restoration service"
        assert index.why_not(good[0]) == ""
        assert index.counts()["restored"] == 2
        assert index.counts()["pending"] == 1 and index.counts()["quarantined"] == 1
    empty_state = folders.state.parent / "no-state"
    empty_state.mkdir()
    with pytest.raises(RestoredIndexError):
        RestoredIndex(empty_state)
    assert not list(empty_state.iterdir())  # a reader never creates a journal


def test_example_site_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[3] / "client" / "service" / "site.example.toml"
    config = load_site_config(example)
    assert config.restore.degradation == "auto" and config.http.host == "127.0.0.1"
    assert (
        config.restore.model_dir == example.parent.parent / "restoration" / "weights" / "cxr64"
    )
    assert config.folders.incoming.is_absolute()


def _noisy_phantom_png(size: int, dose: float = 300.0) -> bytes:
    rng = np.random.default_rng(3)
    clean = phantom_images(1, size, seed=21)[0]
    return png_bytes(np.clip(rng.poisson(clean * dose) / dose, 0, 1))


def _auto_round_trip(model_dir: Path, root: Path) -> dict:
    toml = _edit(
        write_site(root, model_dir, nfe=2),
        'degradation = "noise:poisson:dose=2000,read=0.01"',
        'degradation = "auto"',
    )
    service = SiteService(load_site_config(toml))
    service.warm_up()
    job, _ = service.submit_bytes(_noisy_phantom_png(service.image_size), "noisy.png", "api")
    _drain(service)
    with RestoredIndex(service.config.folders.state) as index:
        hit = index.lookup(job.sha256)
    assert hit is not None
    record = hit[1]
    chosen = record["degradation"]
    assert chosen["mode"] == "auto" and chosen["auto"]["noise_sigma"] > 0.01
    assert chosen["spec"].startswith(("noise:", "blur:"))  # the noise was seen
    assert record["restoration"]["degradation"] == parse_spec(chosen["spec"]).spec
    assert record["restoration"]["method"] == chosen["method"]
    return record


def test_auto_mode_estimates_and_restores_through_the_engine(
    model_dir: Path, tmp_path: Path
) -> None:
    _auto_round_trip(model_dir, tmp_path)


def test_committed_phantom64_prior_serves_a_64px_image(tmp_path: Path) -> None:
    if not (PHANTOM64 / "prior" / "unet").is_dir():
        pytest.skip(f"committed weights not present at {PHANTOM64}")
    record = _auto_round_trip(PHANTOM64, tmp_path)
    assert record["restored_shape"] == [64, 64]
    assert record["restoration"]["model_sha256"]


def test_super_resolution_site_restores_to_the_prior_size(tmp_path: Path, model_dir: Path) -> None:
    toml = write_site(tmp_path, model_dir, degradation="sr:2", nfe=2)
    service = SiteService(load_site_config(toml))
    service.warm_up()
    job, _ = service.submit_bytes(png_bytes(phantom_images(1, 64, seed=31)[0]), "lr.png", "api")
    _drain(service)
    with RestoredIndex(service.config.folders.state) as index:
        png, record = index.lookup(job.sha256)
    size = service.image_size
    assert record["observation_shape"] == [size // 2, size // 2]
    assert record["restored_shape"] == [size, size]
    with Image.open(png) as im:
        assert im.size == (size, size)


def test_api_refuses_oversized_uploads_and_reports_pending_jobs(
    tmp_path: Path, model_dir: Path
) -> None:
    from fastapi.testclient import TestClient

    from festa.client.service.http_api import create_app

    toml = write_site(tmp_path, model_dir, http={"max_upload_mb": 0.01})  # 10 KiB
    service = SiteService(load_site_config(toml))
    client = TestClient(create_app(service))
    big = client.post("/jobs", params={"filename": "big.png"}, content=b"\0" * 20_000)
    assert big.status_code == 413
    small = png_bytes(phantom_images(1, 32, seed=41)[0])
    job = client.post("/jobs", params={"filename": "../../etc/passwd"}, content=small).json()
    assert job["status"] == "pending" and job["source_name"] == "passwd"  # no paths kept
    assert client.get(f"/jobs/{job['job_id']}/image").status_code == 409
    assert client.get("/metrics").json()["pending"] == 1
    assert not list(service.config.folders.restored.iterdir())


def test_oversized_incoming_file_is_quarantined_without_a_copy(
    tmp_path: Path, model_dir: Path
) -> None:
    toml = write_site(tmp_path, model_dir)
    _edit(toml, "settle_seconds = 0.0", "settle_seconds = 0.0\nmax_file_mb = 0.01")
    service = SiteService(load_site_config(toml))
    big = service.config.folders.incoming / "huge.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 20_000)
    _drain(service)
    job = service.journal.get(sha256(big))
    assert job.status == "quarantined" and job.reason_kind == "too_large"
    assert "max_file_mb" in job.reason
    stem = f"{job.sha256[:12]}-huge.png"
    names = sorted(p.name for p in service.config.folders.quarantine.iterdir())
    assert names == [f"{stem}.reason.json", f"{stem}.reason.txt"]  # reason only, no copy
