"""From a data folder to the ``datasets`` datasets the Trainer reads, with on-the-fly albumentations."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, read_layout_labels
from cxrseg.data.splits import load_or_make_split
from cxrseg.data.transforms import ToModelInputs, build_transforms, to_gray
from cxrseg.labels import LabelSet, binarize_mask, unpack_multilabel

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """train/val: ``datasets.Dataset`` with columns image, mask, image_id, is_positive and a transform that yields
    ``pixel_values`` and ``labels``. pixel_counts: per class, summed over the training split (stored resolution)."""

    train: datasets.Dataset
    val: datasets.Dataset
    labels: LabelSet
    train_is_positive: list[bool]
    pixel_counts: list[int]
    num_pixels: int
    split: dict[str, list[str]]


def _rows_to_dataset(rows: list[IndexedImage]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "image_id": datasets.Value("string"),
            "is_positive": datasets.Value("bool"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [r.image_path for r in rows],
            "mask": [r.mask_path for r in rows],
            "image_id": [r.image_id for r in rows],
            "is_positive": [r.is_positive for r in rows],
        },
        features=features,
    )


def make_transform(
    labels: LabelSet, augmentation: str, image_size: int, mean, std, seed: int | None = None
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """The ``set_transform`` function: a batch of decoded rows → ``pixel_values`` and ``labels`` (see
    :class:`~cxrseg.data.transforms.ToModelInputs`). Masks become class indices or planes here, exactly once."""
    pipeline = build_transforms(augmentation, image_size, seed=seed)
    to_inputs = ToModelInputs(mean, std)

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixel_values, targets = [], []
        for image, mask in zip(batch["image"], batch["mask"]):
            mask = np.asarray(mask)
            mask = unpack_multilabel(mask, labels.num_labels) if labels.multilabel else binarize_mask(mask)
            out = pipeline(image=to_gray(np.asarray(image)), mask=mask)
            pixel_values.append(to_inputs.image(out["image"]))
            targets.append(to_inputs.labels(out["mask"]))
        return {"pixel_values": pixel_values, "labels": targets}

    return transform


def load_training_data(
    data_dir: str | os.PathLike,
    labels: LabelSet,
    split_path: str | os.PathLike,
    *,
    image_size: int,
    augmentation: str,
    mean,
    std,
    val_fraction: float = 0.1,
    split_seed: int = 42,
    seed: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    num_proc: int = 1,
) -> TrainingData:
    """Index and validate ``data_dir`` (PNG layout), split it (``split_path``), and attach the transforms."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(
            f"Data folder {root} does not exist. Prepare data (README, Data) or run `cxrseg make-demo-data`."
        )
    declared = read_layout_labels(root)
    if declared.names != labels.names:
        raise DataError(
            f"{root} holds {declared.task} data ({len(declared.names)} classes) but the recipe's task is "
            f"{labels.task}; set `task` to match."
        )
    index = index_layout(root, "train", labels, num_proc=num_proc)
    by_id = {row.image_id: row for row in index}
    split = load_or_make_split(split_path, list(by_id), [row.is_positive for row in index], val_fraction, split_seed)
    train_rows = [by_id[i] for i in split["train"]][:max_train_samples]
    val_rows = [by_id[i] for i in split["val"]][:max_eval_samples]
    train, val = _rows_to_dataset(train_rows), _rows_to_dataset(val_rows)
    train.set_transform(make_transform(labels, augmentation, image_size, mean, std, seed))
    val.set_transform(make_transform(labels, "none", image_size, mean, std))
    pixel_counts = np.sum([row.pixel_counts for row in train_rows], axis=0).tolist()
    logger.info(
        "Data: %d train (%d positive), %d val (%d positive) from %s",
        len(train_rows),
        sum(r.is_positive for r in train_rows),
        len(val_rows),
        sum(r.is_positive for r in val_rows),
        root,
    )
    num_pixels = sum(r.width * r.height for r in train_rows)
    return TrainingData(train, val, labels, [r.is_positive for r in train_rows], pixel_counts, num_pixels, split)
