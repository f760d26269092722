"""One bad input never changes another input's outcome: a poisoned batch restores its good
members and quarantines the offender with its own reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from festa.client.service.config import load_site_config
from festa.client.service.daemon import SiteService, default_restorer_factory
from festa.shared.data.phantoms import phantom_images

from .conftest import png_bytes, write_site

BAD_VR = Path(pydicom.data.get_testdata_file("badVR.dcm"))  # "1A" in an integer tag
JPEG_EXTENDED = Path(pydicom.data.get_testdata_file("JPGExtended.dcm"))  # 12-bit JPEG, good


def _submit_batch(service: SiteService, extra: dict[str, bytes]) -> dict[str, str]:
    """Three phantom PNGs plus `extra` (name -> bytes) queued; returns name -> job id."""
    named = {f"good{i}.png": png_bytes(im) for i, im in enumerate(phantom_images(3, 64, seed=21))}
    named.update(extra)
    return {name: service.submit_bytes(data, name, "api")[0].sha256 for name, data in named.items()}


def test_malformed_dicom_in_a_batch_spoils_nothing_else(tmp_path: Path, model_dir: Path) -> None:
    service = SiteService(load_site_config(write_site(tmp_path, model_dir, nfe=2, batch_size=8)))
    jobs = _submit_batch(
        service, {"badVR.dcm": BAD_VR.read_bytes(), "jpeg12.dcm": JPEG_EXTENDED.read_bytes()}
    )
    assert service.run_once() == len(jobs)  # one batch holds them all
    outcome = {name: service.journal.get(sha) for name, sha in jobs.items()}
    bad = outcome.pop("badVR.dcm")
    assert bad.status == "quarantined" and bad.reason_kind == "malformed"
    assert "1A" in bad.reason
    for name, job in outcome.items():
        assert job.status == "restored", (name, job.reason)
        assert Path(job.result_png).is_file()


class OneImageFails:
    """The real engine, except that it raises on any batch holding a constant image (as an
    engine may on an input it cannot normalise)."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[int] = []

    def parse(self, degradation: str):
        return self.real.parse(degradation)

    def restore(self, images: np.ndarray, degradation: str, seed: int = 0):
        self.calls.append(len(images))
        if any(float(image.std()) == 0.0 for image in images):
            raise FloatingPointError("constant image: cannot normalise")
        return self.real.restore(images, degradation, seed=seed)


def test_restoration_failure_of_one_member_is_its_own(tmp_path: Path, model_dir: Path) -> None:
    config = load_site_config(write_site(tmp_path, model_dir, nfe=2, batch_size=8))
    real = default_restorer_factory(config)
    engines: dict[str, OneImageFails] = {}

    def factory(method: str) -> OneImageFails:
        return engines.setdefault(method, OneImageFails(real(method)))

    service = SiteService(config, restorer_factory=factory)
    flat = png_bytes(np.full((64, 64), 0.5))
    jobs = _submit_batch(service, {"flat.png": flat})
    assert service.run_once() == len(jobs)
    flat_job = service.journal.get(jobs.pop("flat.png"))
    assert flat_job.status == "quarantined" and flat_job.reason_kind == "restore_failed"
    assert "constant image" in flat_job.reason
    for name, sha in jobs.items():
        job = service.journal.get(sha)
        assert job.status == "restored", (name, job.reason)
    (engine,) = engines.values()
    assert engine.calls == [4, 1, 1, 1, 1]  # the batch, then each member alone


@pytest.mark.parametrize("batch_size", [1, 8])
def test_outcomes_do_not_depend_on_the_batch(
    tmp_path: Path, model_dir: Path, batch_size: int
) -> None:
    service = SiteService(
        load_site_config(write_site(tmp_path, model_dir, nfe=2, batch_size=batch_size))
    )
    jobs = _submit_batch(service, {"badVR.dcm": BAD_VR.read_bytes()})
    while service.run_once():
        pass
    statuses = {name: service.journal.get(sha).status for name, sha in jobs.items()}
    assert statuses == {
        "good0.png": "restored",
        "good1.png": "restored",
        "good2.png": "restored",
        "badVR.dcm": "quarantined",
    }
