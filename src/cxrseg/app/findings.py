"""One radiograph through a model, for a person looking at it (``cxrseg app``): the masks at the image's size and,
per class, whether the finding is present, its score and its area.

Definitions, per output class (the model's ``output_names``):

* **score**: the peak probability, ``max`` over the pixels of the class's probability at the model's working size
  (the model's own output, before resizing); in [0, 1].
* **present**: the class's mask is not empty. The mask follows the model's rule
  (:meth:`cxrseg.inference.predictor.Predictor.masks`: its ``postprocess.json``, else ``prob >= 0.5``); with
  ``raw_threshold`` it is ``prob >= 0.5`` at the image's size, whatever the model's post-processing.
* **area**: pixels of the mask at the image's original size; in cm² = pixels × row spacing × column spacing (mm²)
  / 100 when the pixel spacing is known (DICOM ``PixelSpacing``), else None.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrseg.errors import DataError
from cxrseg.imageio.images import read_image, read_image_geometry
from cxrseg.inference.predictor import Predictor
from cxrseg.postprocessing.rules import PostProcess

MAX_MEGAPIXELS = 25.0
"""Largest image (height × width / 10⁶) :func:`read_radiograph` accepts by default: every chest radiograph
(detectors reach about 4300 × 4300 = 18.5 MP) fits, and the probabilities at the image's size stay below about
100 MB per class."""


@dataclass(frozen=True)
class Radiograph:
    """An input image. image: uint8 gray [H, W]; pixel_spacing_mm: (row, column) spacing in mm, or None."""

    name: str
    image: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None


@dataclass(frozen=True)
class Finding:
    """One class of one image (definitions in the module docstring). area_cm2: None without a pixel spacing."""

    name: str
    present: bool
    score: float
    area_pixels: int
    area_cm2: float | None


@dataclass(frozen=True)
class ImageSegmentation:
    """probs: float32 [K, H, W] in [0, 1] and masks: uint8 0/1 [K, H, W], both at the image's size; findings: K."""

    probs: np.ndarray
    masks: np.ndarray
    findings: list[Finding]


def read_radiograph(path: str | os.PathLike, max_megapixels: float = MAX_MEGAPIXELS) -> Radiograph:
    """A PNG, JPEG or DICOM file as a :class:`Radiograph` (pixels by :func:`cxrseg.imageio.images.read_image`).

    The size is checked from the header first: an image over ``max_megapixels`` raises :class:`DataError`
    without being decoded. Unreadable files raise :class:`DataError` (:class:`DicomError` for DICOM files).
    """
    path = Path(path)
    (height, width), spacing = read_image_geometry(path)
    megapixels = height * width / 1e6
    if megapixels > max_megapixels:
        raise DataError(
            f"{path}: {width} x {height} pixels ({megapixels:.1f} megapixels) is larger than the {max_megapixels:g} "
            "megapixels accepted here; downscale the image first."
        )
    return Radiograph(path.name, read_image(path), spacing)


def area_cm2(pixels: int, pixel_spacing_mm: tuple[float, float]) -> float:
    """Area in cm² of ``pixels`` pixels of (row spacing, column spacing) mm: pixels × row × column / 100."""
    return pixels * pixel_spacing_mm[0] * pixel_spacing_mm[1] / 100.0


def summarise_findings(
    names: Sequence[str],
    scores: Sequence[float],
    masks: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None = None,
) -> list[Finding]:
    """One :class:`Finding` per class. scores: the K peak probabilities; masks: [K, H, W] (non-zero = on)."""
    masks = np.asarray(masks)
    if not len(names) == len(scores) == masks.shape[0]:
        raise ValueError(f"summarise_findings: {len(names)} names, {len(scores)} scores, {masks.shape[0]} masks.")
    findings = []
    for name, score, mask in zip(names, scores, masks):
        pixels = int(np.count_nonzero(mask))
        area = None if pixel_spacing_mm is None else area_cm2(pixels, pixel_spacing_mm)
        findings.append(Finding(name, pixels > 0, float(score), pixels, area))
    return findings


def segment_image(
    segmenter: Predictor,
    radiograph: Radiograph,
    *,
    tta: str = "none",
    raw_threshold: bool = False,
) -> ImageSegmentation:
    """Run ``segmenter`` on one radiograph: probabilities and masks at its size, and its findings."""
    image = radiograph.image
    probs = segmenter.probabilities(segmenter.preprocessor(image).unsqueeze(0), tta)[0]  # [K, S, S]
    probs_at_size = segmenter.resize_probabilities(probs, image.shape[:2])
    masks = PostProcess().apply(probs_at_size) if raw_threshold else segmenter.masks(probs, probs_at_size)
    scores = probs.amax(dim=(1, 2)).tolist()
    findings = summarise_findings(segmenter.output_names, scores, masks, radiograph.pixel_spacing_mm)
    return ImageSegmentation(probs_at_size.numpy(), masks, findings)
