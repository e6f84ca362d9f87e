"""How every prepare source shrinks an image and its masks to ``--image-size``."""

from __future__ import annotations

import cv2
import numpy as np


def resize_image(image: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 ``[H, W]`` → uint8 ``[size, size]`` with area interpolation (``cv2.INTER_AREA``: the mean of each
    output pixel's source block when shrinking). ``size`` None or equal to the input keeps the pixels exactly."""
    if size is None or image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """Binary mask ``[H, W]`` (non-zero = finding) → uint8 0/1 ``[size, size]``, keeping small lesions.

    Rule when shrinking: ``coverage`` = area-interpolated fraction of finding pixels in each output pixel's source
    block (``cv2.INTER_AREA`` of the 0/1 mask as float); the output is ``coverage >= 0.5``, and in addition every
    connected region (8-connectivity) of ``coverage > 0`` that has no pixel left by the threshold is kept whole.
    So no lesion disappears: a non-empty mask never becomes empty, and each region the 0.5 threshold would erase
    survives as the output pixels it touches. When enlarging, nearest neighbour. ``size`` None or equal to the
    input keeps the mask exactly.
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    if size is None or binary.shape == (size, size):
        return binary
    if not binary.any():  # most images are negative: skip the float resize
        return np.zeros((size, size), dtype=np.uint8)
    if size > min(binary.shape):
        return cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    coverage = cv2.resize(binary.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    kept = (coverage >= 0.5).astype(np.uint8)
    touched = (coverage > 0).astype(np.uint8)
    if np.array_equal(kept, touched):
        return kept
    count, regions = cv2.connectedComponents(touched, connectivity=8)
    kept_regions = np.zeros(count, dtype=bool)
    kept_regions[np.unique(regions[kept == 1])] = True
    lost = ~kept_regions
    lost[0] = False  # label 0 is the background of `touched`
    return (kept | lost[regions]).astype(np.uint8)


def resize_class_indices(mask: np.ndarray, size: int | None) -> np.ndarray:
    """A class-index mask uint8 ``[H, W]`` → ``[size, size]`` by nearest neighbour (indices are never blended).
    ``size`` None or equal to the input keeps the mask exactly."""
    if size is None or mask.shape == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
