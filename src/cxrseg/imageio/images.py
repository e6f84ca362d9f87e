"""Image files ↔ uint8 gray arrays: the one place cxrseg decodes and encodes pixels.

Reading gives uint8 gray ``[H, W]`` by two rules, for files (:func:`read_image`) and for images already decoded,
e.g. the Pillow images of a ``datasets.Image`` column (:func:`to_gray`):

* **Colour → luma**: ITU-R 601 ``Y = 0.299 R + 0.587 G + 0.114 B`` (OpenCV's ``COLOR_RGB2GRAY``); alpha is
  dropped; palette, 1-bit and CMYK images are first expanded to RGB.
* **More than 8 bits → linear min-max stretch**: ``rint((x - min) * 255 / (max - min))`` over the image, so its
  darkest pixel is 0 and its brightest 255; a constant image gives all 0. 8-bit images are kept exactly.

Files are decoded by Pillow, the decoder ``datasets`` uses for the training layout, so a file and its row in a
saved dataset give the same pixels; Pillow refuses truncated files rather than filling in their missing part.
Pillow reads 16-bit colour PNG/TIFF as 8-bit colour (the high byte of each sample). DICOM files go through
:func:`cxrseg.imageio.dicom.read_dicom`, whose rescale/window step ends with the same stretch.

Writing (:func:`write_png`) is atomic: the PNG appears whole or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxrseg.errors import DataError
from cxrseg.files import atomic_write_bytes
from cxrseg.imageio.pixels import gray_conversion, palette_kind, to_gray

DICOM_SUFFIXES = (".dcm", ".dicom")
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")
"""Mask files :func:`read_mask` reads (case-insensitive)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
"""File types cxrseg reads as radiographs (case-insensitive), each by :func:`read_image`."""

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
"""How :func:`write_png` encodes (PNG is lossless: only speed and file size depend on these): zlib level 1, and every
row filtered as "up" rather than libpng's trial of all five filters per row (faster for about the same size; measured
in ``BENCHMARKS.md``)."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG, JPEG, TIFF, BMP, GIF or DICOM file as uint8 gray ``[H, W]`` (see the module docstring).

    Raises :class:`~cxrseg.errors.DataError` naming ``path`` for a file that cannot be read or decoded
    (:class:`~cxrseg.errors.DicomError` for DICOM files).
    """
    return read_image_converted(path)[0]


def read_image_converted(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """:func:`read_image`, and what it converted in words ("" when the file's pixels are kept as they are):
    e.g. "palette → gray through its palette (inverted gray palette)", "16/32-bit gray → 8-bit (linear min-max
    stretch)", "DICOM MONOCHROME1 → inverted"."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        from cxrseg.imageio.dicom import read_dicom_converted  # pydicom is imported only when a DICOM is read

        return read_dicom_converted(path)
    try:
        with Image.open(path) as image:
            image.load()
            conversion = gray_conversion(image)
            pixels = to_gray(image)
    except Exception as error:  # Pillow raises several types for missing, corrupt or truncated files
        raise DataError(f"{path}: not a readable image file ({type(error).__name__}: {error}).") from error
    if min(pixels.shape) == 0:
        raise DataError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]} pixels).")
    return pixels, conversion


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A mask file as its stored values, uint8 or uint16 ``[H, W]``, and what was converted in words ("" when
    nothing was). One rule, so that a mask means what its file shows:

    * gray 8- or 16-bit: the values as they are (class indices, 0/255, or multi-label bit fields);
    * 1-bit: 0/1;
    * palette (PNG, GIF): a palette of grays is read through it (the gray levels shown: an inverted palette gives
      the picture, not the indices); a coloured palette (VOC style) gives its indices, which are the classes;
    * gray + alpha, or RGB(A) whose three channels are equal: the gray channel (alpha dropped), or the alpha
      channel when the gray one is constant and the alpha is not (a mask painted as transparency);
    * colour RGB: an error (:class:`~cxrseg.errors.DataError`), since colours name no class without a table:
      save the class indices instead.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode, pixels = image.mode, np.asarray(image)
            gray_palette = palette_kind(image) if mode == "P" else ""
            through_palette = np.asarray(image.convert("L")) if gray_palette else None
    except Exception as error:  # as in read_image
        raise DataError(f"{path}: not a readable mask file ({type(error).__name__}: {error}).") from error
    if mode == "P":
        if through_palette is not None:
            return through_palette, f"palette mask → its gray levels{gray_palette}"
        return pixels.astype(np.uint8), "palette mask → its indices (coloured palette)"
    if mode == "1":
        return pixels.astype(np.uint8), "1-bit mask → 0/1"
    if mode in ("L", "I;16", "I;16L", "I;16B"):
        return (pixels.astype(np.uint16) if pixels.dtype != np.uint8 else pixels), ""
    if mode == "I" and pixels.min() >= 0 and pixels.max() < 2**16:
        return pixels.astype(np.uint16), "32-bit mask → 16-bit"
    if mode in ("LA", "RGB", "RGBA") and pixels.ndim == 3:
        channels = pixels[..., :-1] if mode in ("LA", "RGBA") else pixels
        if (channels == channels[..., :1]).all():
            gray, alpha = channels[..., 0], pixels[..., -1] if mode != "RGB" else None
            if alpha is not None and gray.min() == gray.max() and alpha.min() != alpha.max():
                return alpha, f"{mode} mask → its alpha channel (the gray one is constant)"
            return gray, f"{mode} mask with equal channels → gray" + (" (alpha dropped)" if alpha is not None else "")
    raise DataError(
        f"{path}: a {mode} mask with colours; cxrseg cannot tell which colour is which class. Save the mask as "
        "gray class indices (0 = background, 1, 2, ...), 0/255 for one class, or a 16-bit bit field."
    )


def read_image_geometry(path: str | os.PathLike) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """((height, width), pixel spacing or None) of an image file, read from its header without decoding the pixels
    (so a size limit can be checked before the memory is spent).

    Pixel spacing: (row spacing, column spacing) in mm in the patient, from a DICOM's ``PixelSpacing``
    (:func:`cxrseg.imageio.dicom.read_dicom_geometry`); None for other formats (a PNG's or JPEG's resolution is
    for printing, not the patient). Raises like :func:`read_image` for a file whose header cannot be read.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        from cxrseg.imageio.dicom import read_dicom_geometry  # start-up time: pydicom only when a DICOM is read

        return read_dicom_geometry(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:  # as in read_image
        raise DataError(f"{path}: not a readable image file ({type(error).__name__}: {error}).") from error
    return (height, width), None


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Write uint8 or uint16 gray ``[H, W]``, or uint8 RGB ``[H, W, 3]``, as a PNG, atomically. Returns ``path``.

    Encoded by OpenCV with fast settings (:data:`PNG_PARAMS`; PNG is lossless, so only the file size depends on them).
    Raises ValueError for other dtypes or shapes and OSError when encoding or writing fails; nothing is left at
    ``path`` (nor a temporary file) then.
    """
    pixels = np.ascontiguousarray(pixels)
    gray = pixels.ndim == 2 and pixels.dtype in (np.uint8, np.uint16)
    rgb = pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    if not (gray or rgb) or min(pixels.shape[:2]) == 0:
        raise ValueError(
            f"write_png: expected uint8/uint16 [H, W] or uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}."
        )
    if rgb:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels, PNG_PARAMS)
    if not ok:
        raise OSError(f"Could not encode {path} as PNG ({pixels.dtype} {pixels.shape}).")
    return atomic_write_bytes(path, encoded.tobytes())
