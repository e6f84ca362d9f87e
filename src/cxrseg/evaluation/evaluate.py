"""Evaluate a trained model on a split of the PNG layout in constant memory, and tune post-processing there.

Evaluation runs at the model's working resolution (the image processor's size): images and masks go through the
same pipeline as training's validation (``make_transform``: INTER_AREA for images, nearest
neighbour for masks), so the numbers are comparable with the ``eval_*`` metrics training reports.

One streaming pass (:func:`stream_predictions`) feeds an :class:`EvaluationAccumulator`, which updates
:class:`~cxrseg.evaluation.metrics.SegmentationMetrics` (pixel Dice/IoU/AP/best F1 and the Kaggle mean Dice at
``prob >= 0.5``) and writes ``per_image.csv`` row by row; with ``search=True`` the same batches go on to a
:class:`~cxrseg.postprocessing.rules.TripletSearch` (one triplet per class for a multi-output model). Only one batch of
probabilities is ever held.
:mod:`cxrseg.evaluation.examples` streams the same predictions to choose the images of a picture.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrseg.constants import POSTPROCESS_FILENAME
from cxrseg.data.dataset import make_transform, rows_to_dataset
from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, list_pairs, read_layout_labels
from cxrseg.evaluation.metrics import SegmentationMetrics, dice_from_counts
from cxrseg.evaluation.rule_search import TripletSearch
from cxrseg.files import EVALUATION, AtomicCsv, atomic_write_text, check_output_folder, mark_output
from cxrseg.inference.segmenter import Segmenter
from cxrseg.labels import IGNORE_INDEX
from cxrseg.plots import PRCurve, plot_pr_curve
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
"""Probability threshold of the reported Dice, IoU and Kaggle Dice (as in training's evaluation)."""

SEARCH_TOP_THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
SEARCH_MIN_AREAS_AT_1024 = (0, 250, 500, 1000, 1500, 2000, 3000, 4000, 6000)
"""min_area grid in pixels at 1024², scaled to the working size by :func:`search_grid` (SIIM 1st place: 2000)."""
SEARCH_BOTTOM_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
PER_CLASS_TOP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PER_CLASS_BOTTOM_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
"""The thresholds of a multi-output model's per-class search reach lower: a rare class (ChestX-Det's Nodule) can be
ranked well while its probabilities stay below 0.5."""


def search_grid(image_size: int, num_outputs: int = 1) -> tuple[tuple[float, ...], tuple[int, ...], tuple[float, ...]]:
    """The triplet grid (top thresholds, min areas in pixels at ``image_size``², bottom thresholds) of a model with
    ``num_outputs`` foreground outputs (several: :data:`PER_CLASS_TOP_THRESHOLDS` and
    :data:`PER_CLASS_BOTTOM_THRESHOLDS`).

    The areas are :data:`SEARCH_MIN_AREAS_AT_1024` times ``(image_size / 1024)²``, rounded, duplicates dropped. The
    grid contains (0.5, 0, 0.5), plain binarisation, so the search never scores below it.
    """
    ratio = (image_size / 1024) ** 2
    areas = tuple(sorted({round(a * ratio) for a in SEARCH_MIN_AREAS_AT_1024}))
    if num_outputs > 1:
        return PER_CLASS_TOP_THRESHOLDS, areas, PER_CLASS_BOTTOM_THRESHOLDS
    return SEARCH_TOP_THRESHOLDS, areas, SEARCH_BOTTOM_THRESHOLDS


# --------------------------------------------------------------------------- data


def split_rows(segmenter: Segmenter, data_root: str | os.PathLike, split: str) -> tuple[list[IndexedImage], str]:
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
    segmenter: Segmenter, rows: Sequence[IndexedImage], batch_size: int = 8, num_workers: int = 0
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


def target_planes(segmenter: Segmenter, labels: torch.Tensor) -> torch.Tensor:
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


def stream_predictions(segmenter: Segmenter, loader: DataLoader, tta: str = "none") -> Iterator[PredictedBatch]:
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


# --------------------------------------------------------------------------- one streaming pass

PER_IMAGE_COLUMNS = ("image_id", "class", "truth_area", "predicted_area", "dice")
SEARCH_COLUMNS = ("class", "top_threshold", "min_area", "bottom_threshold", "kaggle_dice", "dice")


class EvaluationAccumulator:
    """What :func:`evaluate` adds up over its one pass, batch by batch, in constant memory: the
    :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` at ``prob >= THRESHOLD``, per class the sum of per-image Dice and
    the pixel counts under the mask rule in effect, the number of images with any predicted pixel, and one
    ``per_image`` row per image and class (:data:`PER_IMAGE_COLUMNS`, then ``extra_columns``' values; areas in
    pixels at the working size).
    """

    def __init__(self, names: Sequence[str], per_image: AtomicCsv, extra_columns: Sequence = ()) -> None:
        self.names = tuple(names)
        self.metrics = SegmentationMetrics(threshold=THRESHOLD, num_classes=len(names), class_names=names)
        self.dice_sum = np.zeros(len(names))  # float64 [K]
        self.rule_counts = np.zeros((3, len(names)), dtype=np.int64)  # intersection, predicted, truth pixels
        self.predicted_positive_images = 0
        self.extra_columns = tuple(extra_columns)
        self._per_image = per_image

    def add(self, batch: PredictedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch; returns its (probs, target) as scored: [B, S, S] for one class (what
        :func:`~cxrseg.postprocessing.rules.search_postprocess` takes), else [B, K, S, S]."""
        scored = (batch.probs[:, 0], batch.target[:, 0]) if len(self.names) == 1 else (batch.probs, batch.target)
        self.metrics.update(*scored)
        for result in image_results(batch):
            self.dice_sum += result.dice
            self.rule_counts += np.stack([result.intersection, result.predicted_area, result.truth_area])
            self.predicted_positive_images += bool(result.predicted_area.any())
            for k, name in enumerate(self.names):
                self._per_image.writerow(
                    (
                        result.image_id,
                        name,
                        int(result.truth_area[k]),
                        int(result.predicted_area[k]),
                        f"{result.dice[k]:.6f}",
                        *self.extra_columns,
                    )
                )
        return scored

    def results(self, postprocess: PostProcess | ClassPostProcess | None) -> dict:
        """The metrics values, ``num_predicted_positive_images``, the rule in effect (``postprocess``: None for
        ``prob >= 0.5``), ``kaggle_dice_rule`` (the mean per-image Dice under it) and ``dice_rule`` (the dataset
        Dice under it), per class too in multi-label."""
        values = self.metrics.compute()
        kaggle_rule = self.dice_sum / values["num_images"]
        dice_rule = dice_from_counts(*self.rule_counts)
        results = {
            **values,
            "num_predicted_positive_images": self.predicted_positive_images,
            "postprocess": None if postprocess is None else postprocess.to_dict(),
            "kaggle_dice_rule": float(kaggle_rule.mean()),
            "dice_rule": float(dice_rule.mean()),
        }
        if len(self.names) > 1:
            for name, kaggle, dice in zip(self.names, kaggle_rule, dice_rule):
                results[f"kaggle_dice_rule/{name}"] = float(kaggle)
                results[f"dice_rule/{name}"] = float(dice)
        return results

    def pr_curves(self) -> list[PRCurve]:
        """One pixel precision-recall curve per class, with its AP."""
        aps = self.metrics.class_scores().ap
        return [PRCurve(name, *self.metrics.pr_curve(k), float(aps[k])) for k, name in enumerate(self.names)]


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvaluationResult:
    """metrics: what ``metrics.json`` holds. search_table: the grid, best first (per class, in class order; empty
    without a search). best_postprocess / postprocess_path: the winner of a search and where it was saved."""

    metrics: dict
    out_dir: Path
    search_table: list[dict] = field(default_factory=list)
    best_postprocess: PostProcess | ClassPostProcess | None = None
    postprocess_path: Path | None = None


def default_out_dir(segmenter: Segmenter, split: str) -> Path:
    """``MODEL/evaluation/<split>`` for a local model; ``./evaluation/<owner>--<name>/<split>`` for a Hub id."""
    if segmenter.is_local:
        return segmenter.model_dir / "evaluation" / split
    return Path("evaluation") / segmenter.source.replace("/", "--") / split


def json_safe(value):
    """``value`` with NaN floats as None (JSON null), through nested dicts and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def new_search(segmenter: Segmenter) -> TripletSearch:
    """An empty post-processing search over :func:`search_grid` for the model's outputs and working size."""
    names = segmenter.output_names
    return TripletSearch(*search_grid(segmenter.image_size, len(names)), num_classes=len(names))


def search_results(search: TripletSearch, names: Sequence[str]) -> dict:
    """What ``metrics.json`` says of a search: the winning ``postprocess`` (the saved file's content), its Kaggle
    mean Dice and dataset Dice (means over classes; per class under ``classes`` for several outputs) on the
    searched images, and the number of grid points."""
    best = search.best()
    kaggle, dice = search.kaggle_dice(), search.dataset_dice()
    per_class = {
        name: {"kaggle_dice": float(kaggle[k][best[k]]), "dice": float(dice[k][best[k]])}
        for k, name in enumerate(names)
    }
    results = {
        "postprocess": search.best_rule(names).to_dict(),
        "kaggle_dice": float(np.mean([v["kaggle_dice"] for v in per_class.values()])),
        "dice": float(np.mean([v["dice"] for v in per_class.values()])),
        "grid_points": int(kaggle[0].size),
    }
    if len(names) > 1:
        results["classes"] = per_class
    return results


def evaluate(
    segmenter: Segmenter,
    data_root: str | os.PathLike,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
    *,
    tta: str = "none",
    batch_size: int = 8,
    num_workers: int = 0,
    search: bool = False,
) -> EvaluationResult:
    """Evaluate ``segmenter`` on ``split`` of ``data_root`` and write ``metrics.json``, ``per_image.csv`` and
    ``pr_curve.png`` to ``out_dir`` (default :func:`default_out_dir`; new, empty or an earlier evaluation, apart from
    ``data_root``: :func:`cxrseg.files.check_output_folder`).

    metrics.json: the run's settings, then :meth:`EvaluationAccumulator.results`: the
    :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` values at ``prob >= 0.5`` (dice, iou, kaggle_dice, ap, best_f1,
    best_threshold, num_images, num_positive_images; multi-label: per class too), num_predicted_positive_images
    (images with any predicted pixel), kaggle_dice_rule and dice_rule (per-image mean and dataset Dice under the
    mask rule in effect: ``postprocess`` when set). NaN is written as null.
    per_image.csv: image_id, class, truth_area, predicted_area, dice (pixels at the working size; the mask rule
    in effect). With ``search``: the post-processing grid search (one triplet per class for a multi-output model)
    on the same pass, reported under ``search`` (:func:`search_results`); the winner is saved as
    ``postprocess.json`` next to a local model (in ``out_dir`` for a Hub model) and the full table as
    ``postprocess_search.csv``.
    """
    names = segmenter.output_names
    rows, described = split_rows(segmenter, data_root, split)
    out = Path(out_dir) if out_dir is not None else default_out_dir(segmenter, split)
    check_output_folder(out, EVALUATION, inputs=[data_root])
    mark_output(out, EVALUATION)
    logger.info(
        "Evaluating %s on %d images: %s, at %dx%d%s.",
        segmenter.source,
        len(rows),
        described,
        segmenter.image_size,
        segmenter.image_size,
        ", hflip TTA" if tta == "hflip" else "",
    )
    batches = stream_predictions(segmenter, evaluation_loader(segmenter, rows, batch_size, num_workers), tta)
    searched = new_search(segmenter) if search else None
    with AtomicCsv(out / "per_image.csv", PER_IMAGE_COLUMNS) as per_image:
        accumulator = EvaluationAccumulator(names, per_image)
        for batch in batches:
            scored = accumulator.add(batch)
            if searched is not None:  # the search takes the same batches: still one pass over the images
                searched.add(*scored)

    metrics = {
        "model": segmenter.source,
        "data": str(data_root),
        "split": split,
        "images": described,
        "image_size": segmenter.image_size,
        "tta": tta,
        "threshold": THRESHOLD,
        **accumulator.results(segmenter.postprocess),
    }
    evaluation = EvaluationResult(metrics, out)
    if searched is not None:
        evaluation.best_postprocess = searched.best_rule(names)
        evaluation.search_table = search_table(searched, names)
        evaluation.postprocess_path = save_search(
            segmenter.model_dir if segmenter.is_local else out,
            out,
            evaluation.best_postprocess,
            evaluation.search_table,
        )
        metrics["search"] = {**search_results(searched, names), "saved_to": str(evaluation.postprocess_path)}
    plot_pr_curve(
        accumulator.pr_curves(),
        out / "pr_curve.png",
        title=f"{Path(segmenter.source).name}: {split}, {int(metrics['num_images'])} images at "
        f"{segmenter.image_size}x{segmenter.image_size}",
    )
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    logger.info("Wrote %s, %s and %s.", out / "metrics.json", out / "per_image.csv", out / "pr_curve.png")
    return evaluation


def search_table(search: TripletSearch, names: Sequence[str]) -> list[dict]:
    """Every class's grid (:meth:`TripletSearch.table`, best first) with a ``class`` key, classes in order."""
    return [{"class": name, **row} for k, name in enumerate(names) for row in search.table(k)]


def save_search(model_dir: Path, out: Path, best: PostProcess | ClassPostProcess, table: list[dict]) -> Path:
    """Save the winner as ``model_dir/postprocess.json`` and the table (:func:`search_table`) as
    ``out/postprocess_search.csv``; returns the winner's path."""
    saved_to = best.save(model_dir / POSTPROCESS_FILENAME)
    with AtomicCsv(out / "postprocess_search.csv", SEARCH_COLUMNS) as csv_file:
        for row in table:
            csv_file.writerow(
                (
                    row["class"],
                    row["top_threshold"],
                    row["min_area"],
                    row["bottom_threshold"],
                    f"{row['kaggle_dice']:.6f}",
                    f"{row['dice']:.6f}",
                )
            )
    return saved_to


def fmt(value) -> str:
    """A metric for a summary table: 4 decimals, ``n/a`` for None/NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def headline_lines(m: dict) -> list[str]:
    """The headline metrics of a ``metrics.json`` dict as summary-table lines."""
    positives = f" ({int(m['num_positive_images'])} positive)" if "num_positive_images" in m else ""
    lines = [
        f"{m['split']}: {int(m['num_images'])} images{positives} at "
        f"{m['image_size']}x{m['image_size']}, TTA {m['tta']}",
        f"  {'Dice (pixels)':<28}{fmt(m['dice'])}",
        f"  {'IoU (pixels)':<28}{fmt(m['iou'])}",
        f"  {'Kaggle mean Dice':<28}{fmt(m['kaggle_dice'])}",
        f"  {'AP (pixels)':<28}{fmt(m['ap'])}",
    ]
    if "best_f1" in m:
        lines.append(f"  {'best F1 (at p >= t)':<28}{fmt(m['best_f1'])} (t = {fmt(m['best_threshold'])})")
    if m["postprocess"] is not None:
        lines.append(f"  {'Kaggle Dice, postprocess':<28}{fmt(m['kaggle_dice_rule'])}")
        lines.append(f"  {'Dice, postprocess':<28}{fmt(m['dice_rule'])}")
    return lines


def describe_rule(rule: dict) -> str:
    """A postprocess.json dict in words: one triplet, or ``per class`` for several."""
    if "classes" in rule:
        return f"per class ({len(rule['classes'])} triplets)"
    return f"top {rule['top_threshold']}, area {rule['min_area']}, bottom {rule['bottom_threshold']}"


def class_search_lines(m: dict, search: dict) -> list[str]:
    """Per class: Dice and Kaggle Dice at 0.5 against the tuned triplet's (multi-output searches)."""
    lines = [f"  {'class':<22}{'Dice 0.5':>10}{'tuned':>10}{'Kaggle 0.5':>12}{'tuned':>10}   triplet"]
    for name, tuned in search["classes"].items():
        rule = search["postprocess"]["classes"][name]
        lines.append(
            f"  {name[:21]:<22}{fmt(m[f'dice/{name}']):>10}{fmt(tuned['dice']):>10}"
            f"{fmt(m[f'kaggle_dice/{name}']):>12}{fmt(tuned['kaggle_dice']):>10}   {describe_rule(rule)}"
        )
    return lines


def summary_table(evaluation: EvaluationResult) -> str:
    """A short plain-text table of the headline metrics, and the before/after table of a search."""
    m = evaluation.metrics
    lines = headline_lines(m)
    if "search" in m:
        search = m["search"]
        lines += [
            "Post-processing search (Kaggle mean Dice on this split; the winner is tuned on it, so it is optimistic):",
            f"  {'threshold 0.5':<44}{fmt(m['kaggle_dice'])}",
        ]
        if m["postprocess"] is not None:
            lines.append(
                f"  {'previous postprocess.json':<44}{fmt(m['kaggle_dice_rule'])}   ({describe_rule(m['postprocess'])})"
            )
        lines.append(f"  {'best: ' + describe_rule(search['postprocess']):<44}{fmt(search['kaggle_dice'])}")
        if "classes" in search:
            lines += class_search_lines(m, search)
        lines.append(f"  saved to {evaluation.postprocess_path}")
    return "\n".join(lines)
