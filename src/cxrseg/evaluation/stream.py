"""The stream evaluation reads: a split's rows, batches at the model's working size, and one batch of predictions at
a time (probabilities, targets as one plane per output, masks under the model's rule), with per-image counts.

Images and masks go through the same pipeline as training's validation (``make_transform``: INTER_AREA for images,
nearest neighbour for masks), so the numbers are comparable with the ``eval_*`` metrics training reports. Only one
batch of probabilities is ever held.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrseg.data.dataset import make_transform, rows_to_dataset
from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, list_pairs, read_layout_labels
from cxrseg.evaluation.metrics import dice_from_counts
from cxrseg.inference.predictor import Predictor
from cxrseg.labels import IGNORE_INDEX


def split_rows(segmenter: Predictor, data_root: str | os.PathLike, split: str) -> tuple[list[IndexedImage], str]:
    """The validated image/mask rows of ``split`` and a sentence saying where they came from.

    If the model has a ``splits.json`` naming ``split`` (e.g. "val", the images it never trained on), those ids
    from ``ROOT/images/train``; otherwise every image of the layout folder ``ROOT/images/<split>``.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist (expected the PNG layout: ROOT/images/<split>/*.png).")
    declared = read_layout_labels(root)
    if declared.names != segmenter.labels.names:
        raise DataError(
            f"{root} holds {declared.task} data with classes {list(declared.names)} but the model "
            f"{segmenter.source} predicts {list(segmenter.labels.names)}."
        )
    splits = segmenter.splits or {}
    if split in splits:
        index = {row.image_id: row for row in index_layout(root, "train", segmenter.labels)}
        missing = [image_id for image_id in splits[split] if image_id not in index]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(splits[split])} '{split}' images in {segmenter.model_dir}/splits.json "
                f"are not in {root}/images/train (first: {missing[0]!r}); is this the data the model was trained on?"
            )
        rows = [index[image_id] for image_id in splits[split]]
        return rows, f"the '{split}' ids of {segmenter.model_dir / 'splits.json'} ({root}/images/train)"
    if (root / "images" / split).is_dir():
        list_pairs(root, split)  # clear errors for an empty folder or a missing mask
        return index_layout(root, split, segmenter.labels), f"every image of {root / 'images' / split}"
    known = f" (its splits.json has {sorted(splits)})" if splits else " (it has no splits.json)"
    raise DataError(
        f"Split {split!r} is neither in the model's splits.json{known} nor a folder {root / 'images' / split}."
    )


def _with_ids(transform):
    def with_ids(batch: dict) -> dict:
        out = transform(batch)
        out["image_id"] = batch["image_id"]
        return out

    return with_ids


def evaluation_loader(
    segmenter: Predictor, rows: Sequence[IndexedImage], batch_size: int = 8, num_workers: int = 0
) -> DataLoader:
    """Batches of ``{"pixel_values": float32 [B, 3, S, S], "labels": int64 [B, S, S] or float32 [B, C, S, S],
    "image_id": list[str]}`` at the working size S, read and transformed in ``num_workers`` processes."""
    dataset = rows_to_dataset(list(rows))
    pre = segmenter.preprocessor
    dataset.set_transform(_with_ids(make_transform(segmenter.labels, pre.size[0], pre.mean, pre.std)))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=segmenter.device.type == "cuda",
    )


def _collate(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.stack([item["labels"] for item in items]),
        "image_id": [item["image_id"] for item in items],
    }


def target_planes(segmenter: Predictor, labels: torch.Tensor) -> torch.Tensor:
    """Targets as one 0/1/IGNORE_INDEX uint8 plane per output: [B, K, S, S].

    Single-label class indices [B, S, S] → ``labels == c`` for each foreground class c (ignored pixels stay 255);
    multi-label planes [B, C, S, S] (float 0/1) → uint8.
    """
    if segmenter.labels.multilabel:
        return labels.to(torch.uint8)
    classes = torch.arange(1, segmenter.labels.num_labels, device=labels.device).view(1, -1, 1, 1)
    planes = (labels.unsqueeze(1) == classes).to(torch.uint8)
    return planes.masked_fill_(labels.unsqueeze(1) == IGNORE_INDEX, IGNORE_INDEX)


def plane_counts(masks: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(intersection, predicted area, truth area) int64 [B, K] of binary masks [B, K, S, S] against 0/1/255 target
    planes; ignored pixels count in neither area (as :func:`cxrseg.evaluation.metrics.dice_score`)."""
    valid = target != IGNORE_INDEX
    predicted = (masks != 0) & valid
    positive = target == 1
    return (predicted & positive).sum((2, 3)), predicted.sum((2, 3)), positive.sum((2, 3))


@dataclass
class ImageResult:
    """Per image and output class: pixel counts at the working size and Dice of the mask rule in effect."""

    image_id: str
    truth_area: np.ndarray  # int64 [K]
    predicted_area: np.ndarray  # int64 [K]
    dice: np.ndarray  # float64 [K]
    intersection: np.ndarray | None = None  # int64 [K]


class PredictedBatch(NamedTuple):
    """One batch of :func:`stream_predictions` at the working size S, K outputs."""

    image_ids: list[str]
    probs: torch.Tensor  # float32 [B, K, S, S]
    target: torch.Tensor  # uint8 [B, K, S, S]: 0/1/IGNORE_INDEX (:func:`target_planes`)
    masks: torch.Tensor  # uint8 [B, K, S, S]: the segmenter's rule (post-processing or prob >= 0.5)


def stream_predictions(segmenter: Predictor, loader: DataLoader, tta: str = "none") -> Iterator[PredictedBatch]:
    """The predictions of every batch of ``loader`` (:func:`evaluation_loader`), one batch at a time."""
    for batch in tqdm(loader, desc="evaluating", unit="batch"):
        probs = segmenter.probabilities(batch["pixel_values"], tta)
        target = target_planes(segmenter, batch["labels"])
        masks = torch.from_numpy(segmenter.rule.apply(probs))
        yield PredictedBatch(batch["image_id"], probs, target, masks)


def image_results(batch: PredictedBatch) -> list[ImageResult]:
    """Per-image counts and Dice (:func:`cxrseg.evaluation.metrics.dice_from_counts`) of a batch's masks."""
    intersection, pred_area, truth_area = (x.numpy() for x in plane_counts(batch.masks, batch.target))
    dice = dice_from_counts(intersection, pred_area, truth_area)
    return [
        ImageResult(i, truth_area[b], pred_area[b], dice[b], intersection[b]) for b, i in enumerate(batch.image_ids)
    ]
