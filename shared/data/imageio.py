"""Read one radiograph (PNG, JPEG or DICOM) into a float32 [H, W] array in [0, 1].

Every failure is an `ImageReadError(path, reason)` with a short `kind` ("unreadable",
"zero_bytes", "truncated", "malformed", "not_an_image", "no_pixel_data", "too_large",
"unsupported_depth", "unsupported_channels", "unsupported_format", "invalid", and
"missing_decoder" for `DecoderMissingError`), so a service can quarantine the file with a reason and
carry on; no other exception leaves `read_image`.

DICOM as hospitals store it: uncompressed, deflated, JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000 and RLE (pydicom with the pylibjpeg plugins and GDCM), with or without the Part 10
preamble. Colour secondary captures (RGB, YBR_*) are converted to gray (BT.601 luma); palette
colour, multi-frame, float and 32-bit pixel data are refused. DICOM metadata leaves this module
only through an allow-list of non-identifying fields.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

MAX_SIDE = 16384
"""Images larger than this on either side are refused before any pixels are decoded."""

MAX_PIXELS = 64 * 1024 * 1024
"""Pillow's decompression-bomb limit while we read (warning above it, error above twice it)."""

PIL_FORMATS = ("PNG", "JPEG")

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
"""Colour photometric interpretations read as gray (BT.601 luma of the RGB pydicom decodes)."""

_FLOAT_PIXELS = {0x7FE00008, 0x7FE00009}  # FloatPixelData, DoubleFloatPixelData
_RAW_DICOM_GROUPS = (0x0002, 0x0008)
"""A DICOM file without preamble starts with an element of the meta (0002) or identification
(0008) group."""


class ImageReadError(ValueError):
    """A file could not be read as a radiograph; `reason` says why, `kind` classifies it."""

    def __init__(self, path: str | Path, reason: str, kind: str = "invalid") -> None:
        self.path = Path(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path.name}: {reason}")


class DecoderMissingError(ImageReadError):
    """The pixel data is in a transfer syntax no installed decoder handles (`transfer_syntax`)."""

    def __init__(self, path: str | Path, transfer_syntax: UID, detail: str) -> None:
        self.transfer_syntax = transfer_syntax
        super().__init__(
            path,
            f"no decoder for transfer syntax {transfer_syntax.name} ({transfer_syntax}): {detail}",
            "missing_decoder",
        )


def is_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble magic ("DICM" at byte 128)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def looks_like_raw_dicom(path: str | Path) -> bool:
    """True for a DICOM data set written without preamble: it opens on a group 0002 or 0008
    element (either byte order) and pydicom parses it with `force=True` into a data set that
    holds a SOP class or image rows."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        return False
    groups = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    if not groups & set(_RAW_DICOM_GROUPS):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return "SOPClassUID" in ds or "Rows" in ds
    except Exception:  # whatever pydicom makes of a non-DICOM file, it is not one
        return False


def input_format(path: str | Path) -> str:
    """ "dicom" (with or without preamble), or Pillow's format name in lower case ("png")."""
    if is_dicom(path) or looks_like_raw_dicom(path):
        return "dicom"
    try:
        with Image.open(path) as im:
            return str(im.format).lower()
    except Exception:
        return "unknown"


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or DICOM file as float32 [H, W] in [0, 1] (colour converted to gray).

    DICOM: modality LUT / rescale, then VOI LUT or window, then MONOCHROME1 inverted so that
    bright always means dense; RGB/YBR colour becomes BT.601 luma. Raises ImageReadError (or its
    DecoderMissingError) on anything that is not a readable image, and nothing else.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}", "unreadable") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "not a regular file", "unreadable")
    if info.st_size == 0:
        raise ImageReadError(path, "file is empty (zero bytes)", "zero_bytes")
    try:
        if is_dicom(path):
            return _read_dicom(path)
        try:
            return _read_pillow(path)
        except ImageReadError as exc:
            if exc.kind != "not_an_image" or not looks_like_raw_dicom(path):
                raise
        return _read_dicom(path)
    except OSError as exc:  # the file vanished or became unreadable while we read it
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}", "unreadable") from exc


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
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"decompression bomb refused: {exc}", "too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image (PNG, JPEG or DICOM)", "not_an_image") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
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
    """Parse a DICOM file; `force` only for files without the Part 10 preamble (sniffed first)."""
    try:
        return pydicom.dcmread(
            path, stop_before_pixels=stop_before_pixels, force=not is_dicom(path)
        )
    except Exception as exc:  # pydicom raises many types for a malformed file; all mean "corrupt"
        raise ImageReadError(
            path, f"unreadable DICOM: {type(exc).__name__}: {exc}", "truncated"
        ) from exc


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The dataset's transfer syntax; for a file without meta header, the encoding it was read in."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _read_dicom(path: Path) -> np.ndarray:
    ds = _dcmread(path, stop_before_pixels=False)
    try:
        return _decode_dicom(path, ds)
    except ImageReadError:
        raise
    except Exception as exc:  # a malformed value (e.g. an integer tag holding "1A") anywhere
        raise ImageReadError(
            path, f"malformed DICOM: {type(exc).__name__}: {exc}", "malformed"
        ) from exc


def _decode_dicom(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        kind = "unsupported_depth" if _FLOAT_PIXELS & set(ds.keys()) else "no_pixel_data"
        raise ImageReadError(path, "DICOM has no (integer) pixel data", kind)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric in MONOCHROME:
        expected_samples = 1
    elif photometric in COLOUR:
        expected_samples = 3
    else:
        raise ImageReadError(
            path, f"unsupported photometric interpretation {photometric!r}", "unsupported_channels"
        )
    if samples != expected_samples:
        raise ImageReadError(
            path,
            f"{photometric} DICOM with {samples} samples per pixel (expected {expected_samples})",
            "unsupported_channels",
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
    stored = _decode_pixels(path, ds)
    if photometric in COLOUR:
        image = _colour_to_gray(path, stored, bits_stored)
    else:
        image = _monochrome_to_unit(path, stored, ds, photometric)
    if not np.isfinite(image).all():
        raise ImageReadError(path, "decoded image has NaN or infinite values", "invalid")
    return image.astype(np.float32)


def _decode_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values (colour as RGB); a missing decoder is a DecoderMissingError."""
    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise DecoderMissingError(path, syntax, "pydicom has no decoder for it") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DecoderMissingError(path, syntax, f"no decoder plugin installed ({missing})")
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = syntax  # only our in-memory copy; lets pydicom decode
    try:
        return ds.pixel_array  # YBR colour comes back as RGB
    except Exception as exc:  # every plugin failed on these bytes: corrupt or truncated data
        raise ImageReadError(
            path, f"DICOM pixel data cannot be decoded: {type(exc).__name__}: {exc}", "truncated"
        ) from exc


def _colour_to_gray(path: Path, rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    """RGB [H, W, 3] stored values -> ITU-R BT.601 luma in [0, 1]."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(
            path, f"colour pixel array has shape {rgb.shape}", "unsupported_channels"
        )
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(luma / float(2**bits_stored - 1), 0.0, 1.0)


def _monochrome_to_unit(
    path: Path, stored: np.ndarray, ds: pydicom.Dataset, photometric: str
) -> np.ndarray:
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
    return image


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
    try:
        for key, keyword in DICOM_META_FIELDS.items():
            if keyword in ds and ds[keyword].value not in (None, ""):
                meta[key] = _jsonable(ds[keyword].value)
        meta["voi_lut_sequence"] = bool(ds.get("VOILUTSequence"))
        meta["modality_lut_sequence"] = bool(ds.get("ModalityLUTSequence"))
    except Exception as exc:  # a malformed value in one of the fields we report
        raise ImageReadError(
            path, f"malformed DICOM: {type(exc).__name__}: {exc}", "malformed"
        ) from exc
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
