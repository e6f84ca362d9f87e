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
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrseg.constants import RECIPE_FILENAME
from cxrseg.data.dataset import make_transform, rows_to_dataset
from cxrseg.data.png_layout import (
    IMAGE_SUFFIXES,
    DataError,
    IndexedImage,
    index_layout,
    list_pairs,
    read_layout_labels,
)
from cxrseg.data.transforms import ToModelInputs
from cxrseg.evaluation.metrics import dice_from_counts
from cxrseg.inference.predictor import Predictor
from cxrseg.labels import IGNORE_INDEX, LabelSet


class Selection(NamedTuple):
    """What an evaluation scores. rows: the validated image/mask rows; described: a sentence saying where they come
    from; name: what to call them (the split, or the data folder's name when every image of another dataset is
    scored), e.g. in the default output folder."""

    rows: list[IndexedImage]
    described: str
    name: str


def layout_splits(root: Path) -> list[str]:
    """The split folders of the PNG layout at ``root`` (``ROOT/images/<split>``), sorted."""
    images = root / "images"
    return sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []


def holds_training_images(root: Path, known: set[str], where: str, elsewhere: bool = False) -> bool:
    """Whether ``root`` is the data a model was trained on: every image id of ``known`` (its ``splits.json``,
    named by ``where``) is in ``ROOT/images/train``. None of them: another dataset (False). Some but not all:
    another dataset that shares some file names when the model's training data is known to be ``elsewhere``
    (False), else a :class:`DataError` saying what to do, since scoring it either way could mislead."""
    folder = root / "images" / "train"
    if not known or not folder.is_dir():
        return False
    present = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    found = known & present
    if found == known:
        return True
    if not found or elsewhere:
        return False
    first = sorted(known - present)[0]
    raise DataError(
        f"{folder} holds {len(found)} of the {len(known)} images of {where} but not the others (first: {first!r}): "
        "it is neither the model's training data as it was nor a separate dataset. Evaluate on the training data "
        "unchanged, or prepare the held-out images as a dataset of their own (`cxrseg prepare folder --out NEW`), "
        "which is scored whole."
    )


def trained_on(segmenter: Predictor) -> Path | None:
    """The ``data_dir`` of a local model's saved recipe, when it still exists; else None."""
    recipe = segmenter.model_dir / RECIPE_FILENAME if segmenter.is_local and segmenter.model_dir else None
    try:
        data_dir = yaml.safe_load(recipe.read_text()).get("data_dir") if recipe and recipe.is_file() else None
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return Path(data_dir) if isinstance(data_dir, str) and Path(data_dir).is_dir() else None


def is_training_data(segmenter: Predictor, root: Path) -> bool:
    """Whether ``root`` is the model's training data: the folder its recipe names, or a folder holding every image
    of its ``splits.json`` (:func:`holds_training_images`; False without one)."""
    splits = segmenter.splits or {}
    known = {image_id for ids in splits.values() if isinstance(ids, list) for image_id in ids}
    data_dir = trained_on(segmenter)
    if known and data_dir is not None and data_dir.resolve() == root.resolve():
        return True
    where = f"{segmenter.model_dir}/splits.json"
    return holds_training_images(root, known, where, elsewhere=data_dir is not None)


def split_rows(segmenter: Predictor, data_root: str | os.PathLike, split: str | None = None) -> Selection:
    """The validated image/mask rows to score (:class:`Selection`).

    On the model's training data (:func:`is_training_data`): the ids of ``split`` in the model's ``splits.json``
    (default ``val``, the images it never trained on), from ``ROOT/images/train``; a split that the file does not
    name is the layout folder ``ROOT/images/<split>`` (e.g. ``test``). On any other dataset: every image of every
    split folder, or of the folder ``split`` names. A ``split`` found nowhere is a :class:`DataError` naming the
    splits there are.
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
    folders = layout_splits(root)
    if not folders:
        raise DataError(f"{root}/images holds no split folder: expected the PNG layout ROOT/images/<split>/*.png.")
    splits = segmenter.splits or {}
    if is_training_data(segmenter, root):
        split = split or "val"
        if split in splits:
            index = {row.image_id: row for row in index_layout(root, "train", segmenter.labels)}
            missing = [image_id for image_id in splits[split] if image_id not in index]
            if missing:
                raise DataError(
                    f"{len(missing)} of the {len(splits[split])} '{split}' images in {segmenter.model_dir}/"
                    f"splits.json are not in {root}/images/train (first: {missing[0]!r}): the data changed since "
                    "training; evaluate on the data as it was, or score a separate dataset whole."
                )
            rows = [index[image_id] for image_id in splits[split]]
            described = f"the '{split}' ids of {segmenter.model_dir / 'splits.json'} ({root}/images/train)"
            return Selection(rows, described, split)
        if split in folders and split != "train":
            return _folder(segmenter, root, split)
        raise DataError(
            f"{root} is the model's training data; split {split!r} is neither in its splits.json "
            f"({', '.join(sorted(splits))}) nor a folder of {root}/images ({', '.join(folders)})."
        )
    if split is None:
        rows = [row for name in folders for row in _folder(segmenter, root, name).rows]
        described = f"every image of {root} ({', '.join(folders)}), a dataset the model was not trained on"
        return Selection(rows, described, root.name)
    if split in folders:
        return _folder(segmenter, root, split)
    held = f" (not the model's training data, so its splits.json does not apply: {sorted(splits)})" if splits else ""
    raise DataError(
        f"{root} has no split {split!r}{held}: its splits are {', '.join(folders)} ({root}/images/<split>). "
        "Pass one of them, or leave --split out to score every image."
    )


def _folder(segmenter: Predictor, root: Path, split: str) -> Selection:
    list_pairs(root, split)  # clear errors for an empty folder or a missing mask
    rows = index_layout(root, split, segmenter.labels)
    return Selection(rows, f"every image of {root / 'images' / split}", split)


def _with_ids(transform, labels: LabelSet | None):
    def with_ids(batch: dict) -> dict:
        out = transform(batch)
        out["image_id"] = batch["image_id"]
        if labels is not None:  # the stored mask as it is, decoded exactly as the transform decodes it
            out["original_labels"] = [ToModelInputs.labels(labels.decode_mask(np.asarray(m))) for m in batch["mask"]]
        return out

    return with_ids


def evaluation_loader(
    segmenter: Predictor,
    rows: Sequence[IndexedImage],
    batch_size: int = 8,
    num_workers: int = 0,
    original: bool = False,
) -> DataLoader:
    """Batches of ``{"pixel_values": float32 [B, 3, S, S], "labels": int64 [B, S, S] or float32 [B, C, S, S],
    "image_id": list[str]}`` at the working size S, read and transformed in ``num_workers`` processes; with
    ``original``, also ``"original_labels"``: each image's labels at the stored mask's size (a list, since sizes
    may differ: int64 [H_i, W_i] or float32 [C, H_i, W_i])."""
    dataset = rows_to_dataset(list(rows))
    pre = segmenter.preprocessor
    transform = make_transform(segmenter.labels, pre.size[0], pre.mean, pre.std)
    dataset.set_transform(_with_ids(transform, segmenter.labels if original else None))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=segmenter.device.type == "cuda",
    )


def _collate(items: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.stack([item["labels"] for item in items]),
        "image_id": [item["image_id"] for item in items],
    }
    if "original_labels" in items[0]:
        batch["original_labels"] = [item["original_labels"] for item in items]
    return batch


def target_planes(label_set: LabelSet, labels: torch.Tensor) -> torch.Tensor:
    """Targets as one 0/1/IGNORE_INDEX uint8 plane per foreground class of ``label_set``: [B, K, S, S].

    Single-label class indices [B, S, S] → ``labels == c`` for each foreground class c (ignored pixels stay 255);
    multi-label planes [B, C, S, S] (float 0/1) → uint8.
    """
    labels = torch.as_tensor(labels)
    if label_set.multilabel:
        return labels.to(torch.uint8)
    classes = torch.arange(1, label_set.num_labels, device=labels.device).view(1, -1, 1, 1)
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
    """Per image and output class: pixel counts at the size scored (the working size, or the image's original size:
    :mod:`cxrseg.evaluation.engine`) and Dice of the mask rule in effect."""

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
    original_targets: list[torch.Tensor] | None = None  # per image uint8 [K, H_i, W_i] at the stored mask's size


def stream_predictions(segmenter: Predictor, loader: DataLoader, tta: str = "none") -> Iterator[PredictedBatch]:
    """The predictions of every batch of ``loader`` (:func:`evaluation_loader`), one batch at a time; with
    ``original_targets`` when the loader reads the masks at their stored size."""
    for batch in tqdm(loader, desc="evaluating", unit="batch"):
        probs = segmenter.probabilities(batch["pixel_values"], tta)
        target = target_planes(segmenter.labels, batch["labels"])
        masks = torch.from_numpy(segmenter.rule.apply(probs))
        originals = batch.get("original_labels")
        if originals is not None:
            originals = [target_planes(segmenter.labels, labels.unsqueeze(0))[0] for labels in originals]
        yield PredictedBatch(batch["image_id"], probs, target, masks, originals)


def image_results(batch: PredictedBatch) -> list[ImageResult]:
    """Per-image counts and Dice (:func:`cxrseg.evaluation.metrics.dice_from_counts`) of a batch's masks."""
    intersection, pred_area, truth_area = (x.numpy() for x in plane_counts(batch.masks, batch.target))
    dice = dice_from_counts(intersection, pred_area, truth_area)
    return [
        ImageResult(i, truth_area[b], pred_area[b], dice[b], intersection[b]) for b, i in enumerate(batch.image_ids)
    ]
