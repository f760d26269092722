"""DICOM network ingest: pynetdicom's own storage SCU pushes to the site's Storage SCP; the
datasets go through the daemon's ordinary journal, restoration and quarantine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, RTDoseStorage

from festa.client.service.config import load_site_config
from festa.client.service.daemon import SiteService
from festa.client.service.dicom_scp import STATUS_OUT_OF_RESOURCES, DicomReceiver
from festa.shared.config import ConfigError

from .conftest import write_site

SENDER = "MODALITY1"
BAD_VR = Path(pydicom.data.get_testdata_file("badVR.dcm"))  # RT Dose with "1A" in an IS tag


def radiograph_dicom(pixels: np.ndarray) -> Dataset:
    """A DX "for presentation" DICOM holding `pixels` (uint16, MONOCHROME2, 12 bits stored)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "Test^Phantom", "T0001"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _scu(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    ae.add_requested_context(RTDoseStorage, ExplicitVRLittleEndian)
    return ae


@pytest.fixture
def site(tmp_path: Path, model_dir: Path) -> Iterator[tuple[SiteService, DicomReceiver]]:
    toml = write_site(tmp_path, model_dir, nfe=2, batch_size=8)
    toml.write_text(
        toml.read_text()
        + f'[dicom]\nenabled = true\nport = 0\nae_title = "FESTA"\nallowed_calling_aets = ["{SENDER}"]\n'
        + "max_dataset_mb = 1.0\n"
    )
    config = load_site_config(toml)
    service = SiteService(config)
    receiver = DicomReceiver(service, config.dicom).start()
    yield service, receiver
    receiver.stop()


def test_pushed_radiograph_is_restored_and_malformed_one_quarantined(
    site: tuple[SiteService, DicomReceiver], cxr_open_dir: Path
) -> None:
    service, receiver = site
    png = sorted((cxr_open_dir / "images").glob("*.png"))[0]
    gray = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16  # 8 -> 12 bits
    good = radiograph_dicom(gray)
    bad = pydicom.dcmread(BAD_VR)
    assoc = _scu(SENDER).associate("127.0.0.1", receiver.port, ae_title="FESTA")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(good).Status == 0x0000
        assert assoc.send_c_store(bad).Status == 0x0000  # accepted, judged by the worker
    finally:
        assoc.release()
    while service.run_once():
        pass
    jobs = {job.source_name: job for job in service.journal.jobs()}
    restored = jobs[f"{good.SOPInstanceUID}.dcm"]
    assert restored.status == "restored" and restored.origin == f"dicom:{SENDER}"
    assert Path(restored.result_png).is_file()
    quarantined = jobs[f"{bad.SOPInstanceUID}.dcm"]
    assert quarantined.status == "quarantined" and quarantined.reason_kind == "malformed"
    assert "1A" in quarantined.reason
    assert Path(quarantined.quarantine_path).is_file()  # the received bytes are kept


def test_unknown_calling_ae_title_is_rejected(site: tuple[SiteService, DicomReceiver]) -> None:
    service, receiver = site
    assoc = _scu("STRANGER").associate("127.0.0.1", receiver.port, ae_title="FESTA")
    assert assoc.is_rejected
    assert service.journal.jobs() == []


def test_oversized_dataset_is_refused_and_quarantined_by_reason(
    site: tuple[SiteService, DicomReceiver],
) -> None:
    service, receiver = site
    big = radiograph_dicom(np.zeros((1024, 1024), dtype=np.uint16))  # 2 MiB > 1 MiB limit
    assoc = _scu(SENDER).associate("127.0.0.1", receiver.port, ae_title="FESTA")
    try:
        assert assoc.send_c_store(big).Status == STATUS_OUT_OF_RESOURCES
    finally:
        assoc.release()
    (job,) = service.journal.jobs()
    assert job.status == "quarantined" and job.reason_kind == "too_large"
    assert "dicom.max_dataset_mb" in job.reason


def test_dicom_ingest_needs_an_allow_list(tmp_path: Path, model_dir: Path) -> None:
    toml = write_site(tmp_path, model_dir)
    toml.write_text(toml.read_text() + "[dicom]\nenabled = true\n")
    with pytest.raises(ConfigError) as info:
        load_site_config(toml)
    assert "allowed_calling_aets" in str(info.value)
