"""DICOM reading (to 8-bit grayscale) and writing (SIIM-like files for tests, benchmarks and users).

SIIM-ACR's DICOMs are 1024 x 1024, 8-bit ``MONOCHROME2``, JPEG baseline; pydicom decodes them with pylibjpeg or
Pillow. Other radiographs are often 12/16-bit, ``MONOCHROME1`` (inverted) or carry a modality/VOI LUT; they are
mapped to uint8 as described in :func:`to_uint8`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrseg.errors import DicomError
from cxrseg.imageio.pixels import luma, stretch_to_uint8

METADATA_FIELDS = ("PatientID", "PatientSex", "PatientAge", "ViewPosition", "Rows", "Columns")
"""DICOM keywords recorded per image (``metadata.csv``): what users filter and group on."""

DECODER_HINT = (
    "install a decoder for it: `pip install pylibjpeg pylibjpeg-libjpeg` (JPEG, JPEG-LS), "
    "`pip install pylibjpeg-openjpeg` (JPEG 2000) or `pip install python-gdcm` (most others)"
)


def read_dicom(path: str | Path) -> np.ndarray:
    """The image of a DICOM file as uint8 ``[H, W]`` (see :func:`to_uint8`)."""
    return read_dicom_with_metadata(path)[0]


def read_dicom_geometry(path: str | Path) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """((height, width), pixel spacing in mm or None) of a DICOM image from its header, without decoding pixels.

    height, width: ``Rows``, ``Columns``. Pixel spacing: ``PixelSpacing`` = (row spacing, column spacing), the
    distance in mm between the centres of adjacent rows and of adjacent columns, in the patient; None when absent
    or not two positive numbers. ``ImagerPixelSpacing`` (at the detector, larger than the patient by the
    geometric magnification) is not used. Raises :class:`DicomError` for an unreadable file or one without
    ``Rows``/``Columns`` (not an image; a file with them but without pixel data fails in :func:`read_dicom`).
    """
    ds = _dcmread(path, stop_before_pixels=True)
    try:
        shape = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as error:
        raise DicomError(f"{path}: the DICOM file has no pixel data (no Rows, Columns: is it an image?).") from error
    return shape, pixel_spacing_mm(ds)


def pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """``PixelSpacing`` as (row spacing, column spacing) in mm; None when absent or not two positive numbers."""
    try:
        spacing = tuple(float(value) for value in ds.get("PixelSpacing") or ())
    except (TypeError, ValueError):
        return None
    return spacing if len(spacing) == 2 and all(np.isfinite(spacing)) and min(spacing) > 0 else None


def read_dicom_converted(path: str | Path) -> tuple[np.ndarray, str]:
    """The image of a DICOM file as uint8 ``[H, W]`` and what :func:`to_uint8` converted, in words ("" when the
    pixels are kept as decoded)."""
    ds = _dcmread(path)
    return to_uint8(ds, path), dicom_conversion(ds)


def dicom_conversion(ds: Dataset) -> str:
    """What :func:`to_uint8` does to ``ds``, in words ("" for 8-bit ``MONOCHROME2`` without rescale or VOI)."""
    steps = []
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        steps.append("colour → gray (ITU-R 601 luma)")
    if _needs_stretch(ds, int(ds.get("BitsAllocated", 8) or 8) == 8):
        steps.append(f"{ds.get('BitsStored', ds.get('BitsAllocated', '?'))}-bit → 8-bit (LUT/window, min-max stretch)")
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        steps.append("MONOCHROME1 → inverted (larger is brighter)")
    return "DICOM " + ", ".join(steps) if steps else ""


def _needs_stretch(ds: Dataset, eight_bit: bool) -> bool:
    """Whether :func:`to_uint8` maps the decoded pixels through the LUTs and the min-max stretch (everything but
    8-bit data without a rescale, VOI or modality LUT)."""
    has_rescale = float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0
    has_voi = any(key in ds for key in ("WindowCenter", "VOILUTSequence"))
    return not eight_bit or has_rescale or has_voi or "ModalityLUTSequence" in ds


def read_dicom_with_metadata(path: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """Image (uint8 ``[H, W]``) and metadata of a DICOM file, read once."""
    ds = _dcmread(path)
    return to_uint8(ds, path), dicom_metadata(ds)


def dicom_metadata(ds: Dataset) -> dict[str, str]:
    """The :data:`METADATA_FIELDS` of a dataset as strings ("" where absent), values as written in the file."""
    return {key: "" if ds.get(key) is None else str(ds.get(key)) for key in METADATA_FIELDS}


def to_uint8(ds: Dataset, source: str | Path = "<dataset>") -> np.ndarray:
    """Decode the pixels of ``ds`` to uint8 ``[H, W]``.

    * 8-bit data without a rescale or VOI (SIIM) is returned exactly as decoded (JPEG baseline by Pillow where
      available, see :func:`_decode`).
    * Otherwise: modality LUT / rescale (``apply_modality_lut``), then the first VOI LUT or window in the file
      (``apply_voi_lut``), then the linear min-max stretch of the result to 0..255 that every non-8-bit image
      gets (:func:`cxrseg.imageio.pixels.stretch_to_uint8`; a constant image gives 0).
    * ``MONOCHROME1`` is inverted (255 - x) so that larger is always brighter; colour images are converted to
      luma first (:func:`cxrseg.imageio.pixels.luma`, ITU-R 601), so 8-bit colour is kept exactly like 8-bit gray.

    Raises :class:`DicomError` naming ``source`` for missing pixel data, multi-frame data, or a transfer syntax
    that no installed plugin decodes (with what to install).
    """
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(f"{source}: the DICOM file has no pixel data (is it an image?).")
    try:
        pixels = _decode(ds)
    except (NotImplementedError, RuntimeError, ValueError) as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if isinstance(syntax, UID) else "unknown transfer syntax"
        raise DicomError(
            f"{source}: cannot decode pixel data ({name}): {error}. To read it, {DECODER_HINT}."
        ) from error
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{source}: multi-frame DICOM ({ds.NumberOfFrames} frames); expected one radiograph.")
    if pixels.ndim == 3:  # colour (pydicom already converted YBR to RGB)
        pixels = luma(pixels)
    elif pixels.ndim != 2:
        raise DicomError(f"{source}: unexpected pixel array shape {pixels.shape}; expected [H, W].")

    if not _needs_stretch(ds, pixels.dtype == np.uint8):
        image = pixels
    else:
        image = stretch_to_uint8(apply_voi_lut(apply_modality_lut(pixels, ds), ds))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    jpeg: bool = True,
    quality: int = 95,
    photometric: str = "MONOCHROME2",
    **elements: Any,
) -> Path:
    """Write a single-frame grayscale radiograph as a DICOM file (SIIM-like by default).

    pixels: uint8 ``[H, W]`` (8-bit) or uint16 ``[H, W]`` (16-bit allocated; set ``BitsStored=12`` etc. to say
    fewer bits are used). jpeg: encapsulate a JPEG baseline (Pillow) as SIIM does (uint8 only), else explicit VR
    little endian, uncompressed. photometric: ``MONOCHROME2`` (larger is brighter) or ``MONOCHROME1``.
    elements: any DICOM keywords, e.g. ``PatientSex="F", PatientAge="45", ViewPosition="PA", WindowCenter=...,
    SOPInstanceUID=...`` (a UID is generated where absent). Returns ``path``.
    """
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_dicom: pixels must be uint8 or uint16 [H, W], got {pixels.dtype} {pixels.shape}.")
    if jpeg and pixels.dtype != np.uint8:
        raise ValueError("write_dicom: JPEG baseline holds 8-bit data only; pass jpeg=False for uint16 pixels.")
    path = Path(path)
    sop_instance_uid = elements.pop("SOPInstanceUID", None) or generate_uid()

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 * pixels.itemsize
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if ds.BitsStored != bits:
        ds.HighBit = ds.BitsStored - 1
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _decode(ds: Dataset) -> np.ndarray:
    """The pixel array; JPEG baseline (SIIM) through Pillow's libjpeg-turbo where available: about 4x faster than
    pylibjpeg, pydicom's default choice (conforming decoders, they differ by at most 1 grey level)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax == JPEGBaseline8Bit and "pillow" in get_decoder(JPEGBaseline8Bit).available_plugins:
        return pixel_array(ds, decoding_plugin="pillow")
    return ds.pixel_array


def _dcmread(path: str | Path, stop_before_pixels: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (OSError, InvalidDicomError) as error:
        raise DicomError(f"{path}: not a readable DICOM file: {error}") from error
