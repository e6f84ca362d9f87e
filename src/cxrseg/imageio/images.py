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
from cxrseg.imageio.pixels import to_gray

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
"""File types cxrseg reads as radiographs (case-insensitive), each by :func:`read_image`."""
def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG, JPEG, TIFF, BMP or DICOM file as uint8 gray ``[H, W]`` (see the module docstring).

    Raises :class:`~cxrseg.errors.DataError` naming ``path`` for a file that cannot be read or decoded
    (:class:`~cxrseg.errors.DicomError` for DICOM files).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        from cxrseg.imageio.dicom import read_dicom  # pydicom is imported only when a DICOM is read

        return read_dicom(path)
    try:
        with Image.open(path) as image:
            image.load()
            pixels = to_gray(image)
    except Exception as error:  # Pillow raises several types for missing, corrupt or truncated files
        raise DataError(f"{path}: not a readable image file ({type(error).__name__}: {error}).") from error
    if min(pixels.shape) == 0:
        raise DataError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]} pixels).")
    return pixels


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

    Encoded by OpenCV with fast compression (level 1; PNG is lossless, so only the file size depends on it).
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
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"Could not encode {path} as PNG ({pixels.dtype} {pixels.shape}).")
    return atomic_write_bytes(path, encoded.tobytes())
