"""Read one radiograph (PNG, JPEG or DICOM) into a float32 [H, W] array in [0, 1].

Every failure is an `ImageReadError(path, reason)` with a short `kind` ("zero_bytes", "truncated",
"not_an_image", "no_pixel_data", "too_large", "unsupported_depth", "unsupported_channels",
"unsupported_format"), so a service can quarantine the file with a reason and carry on.
DICOM metadata leaves this module only through an allow-list of non-identifying fields.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

MAX_SIDE = 16384
"""Images larger than this on either side are refused before any pixels are decoded."""

MAX_PIXELS = 64 * 1024 * 1024
"""Pillow's decompression-bomb limit while we read (warning above it, error above twice it)."""

PIL_FORMATS = ("PNG", "JPEG")


class ImageReadError(ValueError):
    """A file could not be read as a radiograph; `reason` says why, `kind` classifies it."""

    def __init__(self, path: str | Path, reason: str, kind: str = "invalid") -> None:
        self.path = Path(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path.name}: {reason}")


def is_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble magic ("DICM" at byte 128)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or DICOM file as float32 [H, W] in [0, 1] (colour converted to gray).

    DICOM: modality LUT / rescale, then VOI LUT or window, then MONOCHROME1 inverted so that
    bright always means dense. Raises ImageReadError on anything that is not a readable image.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}", "unreadable") from exc
    if size == 0:
        raise ImageReadError(path, "file is empty (zero bytes)", "zero_bytes")
    if is_dicom(path):
        return _read_dicom(path)
    return _read_pillow(path)


def _read_pillow(path: Path) -> np.ndarray:
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format not in PIL_FORMATS:
                    raise ImageReadError(
                        path,
                        f"unsupported format {im.format}; expected PNG, JPEG or DICOM",
                        "unsupported_format",
                    )
                _check_side(path, im.width, im.height)
                im.load()
                return _pil_to_gray(path, im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"decompression bomb refused: {exc}", "too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image (PNG, JPEG or DICOM)", "not_an_image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"truncated or corrupt image data: {exc}", "truncated") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit


def _pil_to_gray(path: Path, im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode == "I":
        # Older Pillow opens 16-bit gray PNGs as 32-bit "I"; anything beyond 16 bits is not ours.
        arr = np.asarray(im, dtype=np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(path, "integer image outside 16-bit range", "unsupported_depth")
        return (arr / 65535.0).astype(np.float32)
    if mode in ("RGB", "RGBA", "LA", "P", "PA", "YCbCr", "CMYK"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if mode == "1":
        raise ImageReadError(path, "1-bit image: unsupported bit depth", "unsupported_depth")
    raise ImageReadError(path, f"unsupported pixel mode {mode!r}", "unsupported_depth")


def _check_side(path: Path, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(path, f"empty image size {width}x{height}", "not_an_image")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageReadError(
            path, f"image {width}x{height} exceeds {MAX_SIDE} px a side", "too_large"
        )


def _dcmread(path: Path, stop_before_pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(path, f"unreadable DICOM: {type(exc).__name__}", "truncated") from exc


def _read_dicom(path: Path) -> np.ndarray:
    ds = _dcmread(path, stop_before_pixels=False)
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM has no pixel data", "no_pixel_data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            path, f"unsupported photometric interpretation {photometric!r}", "unsupported_channels"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(
            path, "DICOM with more than one sample per pixel", "unsupported_channels"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageReadError(path, "multi-frame DICOM is not a radiograph", "unsupported_channels")
    bits_allocated = int(ds.get("BitsAllocated", 0))
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise ImageReadError(
            path,
            f"unsupported bit depth (allocated {bits_allocated}, stored {bits_stored})",
            "unsupported_depth",
        )
    _check_side(path, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)))
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad pixel data; all mean "corrupt"
        raise ImageReadError(
            path, f"DICOM pixel data cannot be decoded: {type(exc).__name__}: {exc}", "truncated"
        ) from exc
    if stored.ndim != 2:
        raise ImageReadError(path, f"pixel array has shape {stored.shape}", "unsupported_channels")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi_range = _voi_output_range(ds)
    if voi_range is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = voi_range
    else:
        lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    image = np.zeros_like(values) if span <= 0 else (values - lo) / span
    image = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """Output range of the VOI transform pydicom will apply, or None when there is none."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # Same range rule as pydicom's windowing (DICOM PS3.3 C.11.2.1.2).
    bits_stored = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits_stored - 1)
    else:
        lo, hi = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


DICOM_META_FIELDS: dict[str, str] = {
    "photometric_interpretation": "PhotometricInterpretation",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "pixel_representation": "PixelRepresentation",
    "rescale_slope": "RescaleSlope",
    "rescale_intercept": "RescaleIntercept",
    "window_center": "WindowCenter",
    "window_width": "WindowWidth",
    "pixel_spacing": "PixelSpacing",
    "imager_pixel_spacing": "ImagerPixelSpacing",
    "rows": "Rows",
    "columns": "Columns",
    "modality": "Modality",
}
"""The only DICOM attributes that ever leave this module: technical, never identifying."""


def read_dicom_meta(path: str | Path) -> dict[str, Any]:
    """The non-identifying technical fields of a DICOM file (see DICOM_META_FIELDS), JSON-ready.

    Never returns patient, study, institution or date tags. Missing fields are omitted.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=True)
    meta: dict[str, Any] = {}
    for key, keyword in DICOM_META_FIELDS.items():
        if keyword in ds and ds[keyword].value not in (None, ""):
            meta[key] = _jsonable(ds[keyword].value)
    meta["voi_lut_sequence"] = bool(ds.get("VOILUTSequence"))
    meta["modality_lut_sequence"] = bool(ds.get("ModalityLUTSequence"))
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [_jsonable(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
