"""read_image / read_dicom_meta on real files: PNGs and JPEGs we write, the real cxr-open DICOM,
a photometric variant derived from it, and broken files."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pydicom.encaps
import pydicom.uid
import pytest
from PIL import Image

from festa.shared.data.imageio import (
    DecoderMissingError,
    ImageReadError,
    is_dicom,
    read_dicom_meta,
    read_image,
)


@pytest.fixture(scope="module")
def real_dicom(cxr_open_dir: Path) -> Path:
    return cxr_open_dir / "dicom" / "RG1_UNCR.dcm"


def _ramp(h: int = 32, w: int = 48) -> np.ndarray:
    return np.linspace(0.0, 1.0, h * w, dtype=np.float64).reshape(h, w)


def test_8bit_png_reads_to_unit_range(tmp_path: Path) -> None:
    pixels = (_ramp() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (32, 48)
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-6)


def test_16bit_png_keeps_full_precision(tmp_path: Path) -> None:
    pixels = (_ramp() * 65535).round().astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a16.png")
    image = read_image(tmp_path / "a16.png")
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)
    # distinct 16-bit levels survive, which an 8-bit path would collapse
    assert len(np.unique(image)) > 256


def test_rgb_png_and_jpeg_become_gray(tmp_path: Path) -> None:
    gray = (_ramp() * 255).round().astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 255)])).save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (32, 48)
        np.testing.assert_allclose(image, gray / 255.0, atol=1 / 255 + 1e-6)
    jpeg = read_image(tmp_path / "rgb.jpg")
    assert jpeg.shape == (32, 48)
    assert np.abs(jpeg - gray / 255.0).mean() < 0.02


def test_real_dicom_is_monochrome1_inverted_and_windowed(real_dicom: Path) -> None:
    ds = pydicom.dcmread(real_dicom)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = read_image(real_dicom)
    assert image.shape == (int(ds.Rows), int(ds.Columns))
    assert image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # MONOCHROME1: high stored value = dark display, so the brightest stored pixel reads darkest
    stored = ds.pixel_array
    assert image.flat[stored.argmax()] == pytest.approx(image.min(), abs=1e-6)
    assert image.flat[stored.argmin()] == pytest.approx(image.max(), abs=1e-6)
    # the window (centre/width) is honoured: stored value v maps to 1 - (v - c') / w' + ... linear
    c, w = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
    v = float(stored.flat[0])
    expected = 1.0 - np.clip((v - c) / w + 0.5, 0.0, 1.0)
    assert image.flat[0] == pytest.approx(expected, abs=1e-5)


def test_monochrome2_variant_reads_the_same_anatomy(real_dicom: Path, tmp_path: Path) -> None:
    """Inverting the stored pixels and flagging MONOCHROME2 must give the same display image."""
    ds = pydicom.dcmread(real_dicom)
    max_stored = 2 ** int(ds.BitsStored) - 1
    inverted = (max_stored - ds.pixel_array.astype(np.int32)).astype(np.uint16)
    ds.PixelData = inverted.tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = max_stored - float(ds.WindowCenter) + 1  # mirror the window too
    variant = tmp_path / "mono2.dcm"
    ds.save_as(variant, enforce_file_format=True)
    original = read_image(real_dicom)
    mirrored = read_image(variant)
    assert np.abs(original - mirrored).max() < 2e-4


def test_dicom_rescale_slope_intercept_is_applied(real_dicom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(real_dicom)
    for tag in ("WindowCenter", "WindowWidth"):
        del ds[tag]
    ds.RescaleSlope = 2.0
    ds.RescaleIntercept = -100.0
    path = tmp_path / "rescaled.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = read_image(path)
    # without a window the modality values are min-max scaled, then MONOCHROME1 inverted
    values = ds.pixel_array.astype(np.float64) * 2.0 - 100.0
    expected = 1.0 - (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(image, expected, atol=1e-5)
    meta = read_dicom_meta(path)
    assert meta["rescale_slope"] == 2.0 and meta["rescale_intercept"] == -100.0


def test_dicom_meta_has_technical_fields_and_no_identity(real_dicom: Path) -> None:
    ds = pydicom.dcmread(real_dicom, stop_before_pixels=True)
    meta = read_dicom_meta(real_dicom)
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["bits_stored"] == int(ds.BitsStored)
    assert meta["rows"] == int(ds.Rows) and meta["columns"] == int(ds.Columns)
    assert "pixel_spacing" in meta
    text = json.dumps(meta)  # JSON-ready
    for identifying in (str(ds.PatientName), str(ds.PatientID)):
        assert identifying and identifying not in text
    assert is_dicom(real_dicom)


def _expect(path: Path, kind: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.kind == kind, info.value.reason
    assert info.value.path == path and info.value.reason
    return info.value


def test_broken_files_raise_typed_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _expect(empty, "zero_bytes")

    text = tmp_path / "notes.png"
    text.write_text("this is not a radiograph\n" * 20)
    _expect(text, "not_an_image")

    buf = io.BytesIO()
    Image.fromarray((_ramp(64, 64) * 255).astype(np.uint8)).save(buf, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _expect(truncated, "truncated")

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="JPEG")
    jpeg = tmp_path / "truncated.jpg"
    jpeg.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _expect(jpeg, "truncated")

    onebit = tmp_path / "onebit.png"
    Image.fromarray(_ramp() > 0.5).save(onebit)
    _expect(onebit, "unsupported_depth")

    gif = tmp_path / "anim.gif"
    Image.fromarray((_ramp() * 255).astype(np.uint8)).save(gif)
    _expect(gif, "unsupported_format")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def _png_header_only(side: int) -> bytes:
    """A valid PNG claiming `side` x `side` 8-bit gray pixels over a tiny compressed body."""
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 1024)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000))  # over the side limit
    _expect(bomb, "too_large")
    bomb.write_bytes(_png_header_only(12000))  # under the side limit, over the pixel budget
    _expect(bomb, "too_large")


def test_broken_dicoms_raise_typed_errors(real_dicom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(real_dicom)
    del ds.PixelData
    no_pixels = tmp_path / "nopixels.dcm"
    ds.save_as(no_pixels, enforce_file_format=True)
    _expect(no_pixels, "no_pixel_data")

    raw = real_dicom.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) // 2])
    _expect(truncated, "truncated")

    ds = pydicom.dcmread(real_dicom)
    ds.BitsAllocated = 32
    odd_depth = tmp_path / "depth32.dcm"
    ds.save_as(odd_depth, enforce_file_format=True)
    _expect(odd_depth, "unsupported_depth")

    ds = pydicom.dcmread(real_dicom)
    ds.Rows = 20000
    huge = tmp_path / "huge.dcm"
    ds.save_as(huge, enforce_file_format=True)
    _expect(huge, "too_large")


def test_original_file_is_untouched(real_dicom: Path, tmp_path: Path) -> None:
    before = real_dicom.read_bytes()
    read_image(real_dicom)
    read_dicom_meta(real_dicom)
    assert real_dicom.read_bytes() == before


# ---- DICOM as hospitals store it: pydicom's own test corpus ------------------------------------

PYDICOM_DATA = Path(pydicom.data.get_testdata_file("MR_small.dcm")).parent


def test_pydicom_corpus_is_decoded_or_refused_with_a_typed_reason() -> None:
    """Every entry pydicom ships (files, README, folders) is a finite 2-D [0, 1] image or an
    ImageReadError; pydicom's external test files are not downloaded, only what ships is walked."""
    entries = sorted(pydicom.data.get_testdata_files())
    assert len(entries) > 100
    counts: dict[str, int] = {}
    for entry in entries:
        try:
            image = read_image(entry)
        except ImageReadError as exc:
            assert exc.reason, entry
            counts[exc.kind] = counts.get(exc.kind, 0) + 1
            continue
        assert image.ndim == 2 and image.dtype == np.float32, entry
        assert np.isfinite(image).all() and 0.0 <= image.min() <= image.max() <= 1.0, entry
        counts["decoded"] = counts.get("decoded", 0) + 1
    print(f"pydicom corpus: {len(entries)} entries: {dict(sorted(counts.items()))}")
    assert counts["decoded"] >= 60


def _mr_small() -> np.ndarray:
    return read_image(PYDICOM_DATA / "MR_small.dcm")


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_lossless_dicom_matches_the_uncompressed_original(name: str) -> None:
    np.testing.assert_allclose(read_image(PYDICOM_DATA / name), _mr_small(), atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "JPGExtended.dcm",  # JPEG extended, 12-bit
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
        "JPEG2000.dcm",  # JPEG 2000 lossy
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless (process 14)
        "image_dfl.dcm",  # deflated
    ],
)
def test_compressed_transfer_syntaxes_decode(name: str) -> None:
    image = read_image(PYDICOM_DATA / name)
    assert image.ndim == 2 and image.std() > 0.01  # real content, not a blank


def test_colour_secondary_capture_becomes_its_luma() -> None:
    rgb = pydicom.dcmread(PYDICOM_DATA / "SC_rgb_dcmtk_+eb+cr.dcm").pixel_array.astype(np.float64)
    luma = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(
        read_image(PYDICOM_DATA / "SC_rgb_dcmtk_+eb+cr.dcm"), luma, atol=1e-6
    )
    # the same picture stored as YBR_FULL (lossy JPEG) reads as nearly the same gray image
    ybr = read_image(PYDICOM_DATA / "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    assert np.abs(ybr - luma).mean() < 0.02


def test_palette_colour_is_refused_with_its_reason() -> None:
    error = _expect(PYDICOM_DATA / "examples_palette.dcm", "unsupported_channels")
    assert "PALETTE COLOR" in error.reason


def test_malformed_value_is_a_typed_refusal() -> None:
    """pydicom's badVR.dcm holds "1A" in an integer tag (an untyped ValueError before)."""
    error = _expect(PYDICOM_DATA / "badVR.dcm", "malformed")
    assert "1A" in error.reason


def test_dicom_without_preamble_reads_like_the_part10_file(
    real_dicom: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(real_dicom)
    raw = tmp_path / "raw.dcm"
    del ds.file_meta
    ds.preamble = None  # no preamble, no meta header: the bare data set
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert not is_dicom(raw) and raw.read_bytes()[:2] == b"\x08\x00"
    np.testing.assert_allclose(read_image(raw), read_image(real_dicom), atol=1e-6)
    assert read_dicom_meta(raw)["rows"] == int(ds.Rows)


def test_missing_decoder_names_the_transfer_syntax(real_dicom: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(real_dicom)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # no decoder exists for it
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DecoderMissingError) as info:
        read_image(path)
    assert info.value.kind == "missing_decoder"
    assert info.value.transfer_syntax == pydicom.uid.MPEG2MPML
    assert "MPEG2" in info.value.reason and isinstance(info.value, ImageReadError)


def test_a_folder_is_refused_not_raised(tmp_path: Path) -> None:
    _expect(tmp_path, "unreadable")
