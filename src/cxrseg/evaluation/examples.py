"""Choosing the images of ``cxrseg visualize predictions``: true positives, misses, false positives and true negatives
taken in turn, then predicted again for their pictures.

One streaming pass over the split (:func:`cxrseg.evaluation.stream.stream_predictions`) keeps only per-image pixel
counts, so choosing costs no more memory than evaluating; only the chosen images' probabilities are held.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from cxrseg.data.png_layout import IndexedImage
from cxrseg.evaluation.stream import (
    ImageResult,
    evaluation_loader,
    image_results,
    split_rows,
    stream_predictions,
    target_planes,
)
from cxrseg.imageio.images import read_image
from cxrseg.inference.predictor import Predictor
from cxrseg.plots import PredictionExample

CATEGORIES = ("true positive", "miss", "false positive", "true negative")


def categorise(truth_area: int, predicted_area: int) -> str:
    """An image's category from its truth and predicted areas (any class)."""
    if truth_area > 0:
        return "true positive" if predicted_area > 0 else "miss"
    return "false positive" if predicted_area > 0 else "true negative"


def select_examples(results: Sequence[ImageResult], n: int) -> list[tuple[ImageResult, str]]:
    """Up to ``n`` images taking the categories in turn (true positive, miss, false positive, true negative).

    Within a category: true positives and misses by truth area, false positives by predicted area (largest
    first), true negatives in id order; deterministic.
    """
    groups: dict[str, list[ImageResult]] = {c: [] for c in CATEGORIES}
    for result in results:
        groups[categorise(int(result.truth_area.sum()), int(result.predicted_area.sum()))].append(result)
    groups["true positive"].sort(key=lambda r: (-int(r.truth_area.sum()), r.image_id))
    groups["miss"].sort(key=lambda r: (-int(r.truth_area.sum()), r.image_id))
    groups["false positive"].sort(key=lambda r: (-int(r.predicted_area.sum()), r.image_id))
    groups["true negative"].sort(key=lambda r: r.image_id)
    chosen: list[tuple[ImageResult, str]] = []
    while len(chosen) < n and any(groups.values()):
        for category in CATEGORIES:
            if groups[category] and len(chosen) < n:
                chosen.append((groups[category].pop(0), category))
    return chosen


def prediction_examples(
    segmenter: Predictor,
    data_root: str | os.PathLike,
    split: str = "val",
    n: int = 16,
    *,
    tta: str = "none",
    batch_size: int = 8,
    num_workers: int = 0,
) -> list[PredictionExample]:
    """Examples for :func:`cxrseg.plots.plot_prediction_grid`: one streaming pass keeps only per-image counts,
    :func:`select_examples` picks ``n``, and those images are predicted again for their pictures."""
    rows = split_rows(segmenter, data_root, split).rows
    loader = evaluation_loader(segmenter, rows, batch_size, num_workers)
    results = [result for batch in stream_predictions(segmenter, loader, tta) for result in image_results(batch)]
    by_id = {row.image_id: row for row in rows}
    examples = []
    for result, category in select_examples(results, n):
        row = by_id[result.image_id]
        image, truth = _read_pair(segmenter, row)
        image, truth = segmenter.preprocessor.resize(image, truth)
        probs = segmenter.probabilities(segmenter.preprocessor.to_pixel_values(image).unsqueeze(0), tta)[0]
        truth = torch.from_numpy(np.ascontiguousarray(truth.transpose(2, 0, 1) if truth.ndim == 3 else truth))
        batch = truth.unsqueeze(0).long() if truth.ndim == 2 else truth.unsqueeze(0)
        planes = target_planes(segmenter.labels, batch)[0]
        examples.append(
            PredictionExample(
                result.image_id,
                image,
                planes.numpy(),
                probs.numpy(),
                segmenter.masks(probs),
                float(result.dice.mean()),
                category,
            )
        )
    return examples


def _read_pair(segmenter: Predictor, row: IndexedImage) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 gray image, mask as class indices [H, W] or planes [H, W, C]) of a layout row, as training reads it."""
    image = read_image(row.image_path)
    with Image.open(row.mask_path) as mask_image:
        mask = np.asarray(mask_image)
    return image, segmenter.labels.decode_mask(mask)
