"""Decoded pixels → uint8 gray ``[H, W]``: the two rules every reader applies (see :mod:`cxrseg.imageio.images`).

* **Colour → luma**: ITU-R 601 ``Y = 0.299 R + 0.587 G + 0.114 B`` (OpenCV's ``COLOR_RGB2GRAY``); alpha is
  dropped; palette, 1-bit and CMYK images are first expanded to RGB.
* **More than 8 bits → linear min-max stretch**: ``rint((x - min) * 255 / (max - min))`` over the image, so its
  darkest pixel is 0 and its brightest 255; a constant image gives all 0. 8-bit images are kept exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

PIXEL_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F")
"""Pillow modes :func:`to_gray` reads as they are; any other mode (palette, 1-bit, CMYK, ...) is expanded to RGB."""


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Any real-valued ``[H, W]`` as uint8 by the linear min-max stretch (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * 255.0 / (high - low)).clip(0, 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """RGB or RGBA ``[H, W, 3|4]`` → ITU-R 601 luma ``[H, W]``, alpha dropped. uint8, uint16 and float32 keep their
    dtype (integers rounded); other dtypes give float32."""
    rgb = np.asarray(rgb)
    if rgb.dtype not in (np.uint8, np.uint16, np.float32):
        rgb = rgb.astype(np.float32)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)


def to_gray(image: np.ndarray | Image.Image) -> np.ndarray:
    """A decoded image as uint8 gray ``[H, W]`` (see the module docstring).

    image: a Pillow image, or an array ``[H, W]`` (gray), ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` (RGB) or
    ``[H, W, 4]`` (RGBA) of any integer or float dtype.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode in PIXEL_MODES else image.convert("RGB"))
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
        pixels = pixels[..., 0]
    elif pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        pixels = luma(pixels)
    elif pixels.ndim != 2:
        raise ValueError(f"Expected an image [H, W] or [H, W, 1..4], got shape {pixels.shape}.")
    return pixels if pixels.dtype == np.uint8 else stretch_to_uint8(pixels)
