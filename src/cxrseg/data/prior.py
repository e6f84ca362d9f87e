"""The prior mask: the training set's mean mask, thresholded at 0.5, the trivial predictor every evaluation reports
beside the model (:mod:`cxrseg.evaluation.baselines`). Large structures (lungs, heart) sit in much the same place
in every radiograph, so a fixed mask already scores a high Dice; a model's number means something only above it.

Definition: for foreground class ``c``, ``prior[c] = mean over training images of (mask == c)`` with each mask
resized to the working size S by nearest neighbour (as evaluation resizes masks), ignored pixels counting as
absent; the prior mask is ``prior >= 0.5``. At most :data:`MAX_PRIOR_IMAGES` images (evenly spaced over the
training split) are read, which fixes the mean to well under 1% on a large set at a bounded cost.

Saved in a model's output folder as :data:`~cxrseg.constants.PRIOR_MASK_FILENAME`, a PNG at S x S in the mask
format of ``cxrseg predict`` (one class: 0/255; several: the 16-bit bit field of :func:`cxrseg.labels.pack_multilabel`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxrseg.constants import PRIOR_MASK_FILENAME
from cxrseg.imageio.images import write_png
from cxrseg.labels import IGNORE_INDEX, LabelSet, pack_multilabel, unpack_multilabel

MAX_PRIOR_IMAGES = 1000
"""Training masks read for the prior (evenly spaced); every one when the split is smaller."""


def foreground_planes(labels: LabelSet, decoded: np.ndarray) -> np.ndarray:
    """A decoded mask (:meth:`LabelSet.decode_mask`: class indices [H, W] or planes [H, W, C]) as bool planes
    [K, H, W], one per foreground class."""
    if labels.multilabel:
        return np.moveaxis(decoded, -1, 0) == 1
    classes = np.arange(labels.first_foreground, labels.num_labels, dtype=decoded.dtype)
    return (decoded[None] == classes[:, None, None]) & (decoded[None] != IGNORE_INDEX)


def compute_prior_mask(masks: Sequence, labels: LabelSet, image_size: int) -> np.ndarray:
    """The prior mask (module docstring) of stored masks (arrays or Pillow images, as the layout holds them):
    bool [K, S, S], K = ``len(labels.foreground)``."""
    if not len(masks):
        raise ValueError("compute_prior_mask needs at least one mask.")
    step = max(1, -(-len(masks) // MAX_PRIOR_IMAGES))
    chosen = range(0, len(masks), step)
    total = np.zeros((len(labels.foreground), image_size, image_size), dtype=np.float64)
    for i in chosen:
        decoded = labels.decode_mask(np.asarray(masks[i]))
        resized = cv2.resize(decoded, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
        if resized.ndim == 2 and labels.multilabel:  # cv2 drops a single channel
            resized = resized[..., None]
        total += foreground_planes(labels, resized)
    return total / len(chosen) >= 0.5


def save_prior_mask(folder: str | os.PathLike, prior: np.ndarray) -> Path:
    """Write bool [K, S, S] as ``folder/prior_mask.png`` (module docstring); returns its path."""
    planes = np.asarray(prior, dtype=np.uint8)
    pixels = planes[0] * np.uint8(255) if planes.shape[0] == 1 else pack_multilabel(planes)
    return write_png(Path(folder) / PRIOR_MASK_FILENAME, pixels)


def load_prior_mask(folder: str | os.PathLike | None, num_classes: int, image_size: int) -> np.ndarray | None:
    """The prior mask saved in ``folder`` as bool [K, S, S] at ``image_size`` (nearest neighbour if saved at
    another size), or None when the folder has none (models trained before it, Hub models without it) or it does
    not fit ``num_classes``."""
    path = Path(folder) / PRIOR_MASK_FILENAME if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except OSError:
        return None
    if pixels.ndim != 2 or (num_classes == 1 and pixels.dtype != np.uint8):
        return None
    planes = (pixels != 0)[None] if num_classes == 1 else unpack_multilabel(pixels, num_classes).transpose(2, 0, 1)
    if num_classes > 1 and (pixels.astype(np.uint32) >> num_classes).any():
        return None
    if planes.shape[1:] != (image_size, image_size):
        size = (image_size, image_size)
        planes = np.stack([cv2.resize(p.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for p in planes])
    return planes.astype(bool)
