"""Decoded pixels → uint8 gray ``[H, W]``: the two rules every reader applies (see :mod:`cxrseg.imageio.images`).

* **Colour → luma**: ITU-R 601 ``Y = 0.299 R + 0.587 G + 0.114 B`` (OpenCV's ``COLOR_RGB2GRAY``); alpha is
  dropped; palette, 1-bit and CMYK images are first expanded to RGB, so a palette image is read through its
  palette (an inverted gray palette, as some JSRT conversions have, gives the picture as it is shown, not the
  indices).
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


def gray_conversion(image: Image.Image) -> str:
    """What :func:`to_gray` does to a Pillow image, in words ("" when its pixels are kept as they are): what
    ``cxrseg prepare folder`` reports per file."""
    mode = image.mode
    if mode == "L":
        return ""
    if mode == "P":
        return f"palette → gray through its palette{palette_kind(image)}"
    if mode in ("LA", "PA"):
        return "gray + alpha → gray (alpha dropped)"
    if mode in ("RGB", "RGBA"):
        alpha = " (alpha dropped)" if mode == "RGBA" else ""
        bands = np.asarray(image)[..., :3]
        if (bands == bands[..., :1]).all():
            return f"{mode} with equal channels → gray{alpha}"
        return f"{mode} colour → gray (ITU-R 601 luma){alpha}"
    if mode.startswith("I") or mode == "F":
        return f"{'float' if mode == 'F' else '16/32-bit'} gray → 8-bit (linear min-max stretch)"
    return f"{mode} → RGB → gray (ITU-R 601 luma)"


def palette_kind(image: Image.Image) -> str:
    """How a palette image's palette reads, as a suffix for messages: ``" (inverted gray palette)"`` or
    ``" (gray palette)"`` when the entries it uses are grays, ``""`` when they are colours."""
    entries = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(np.asarray(image))
    colours = entries[used[used < len(entries)]]
    if not len(colours) or not (colours == colours[:, :1]).all():
        return ""
    levels = colours[:, 0]
    inverted = len(levels) > 1 and bool(np.all(np.diff(levels) < 0))
    return " (inverted gray palette)" if inverted else " (gray palette)"


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
