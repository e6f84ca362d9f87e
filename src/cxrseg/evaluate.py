"""Evaluate a trained model on a split of the PNG layout in constant memory, and tune post-processing there.

Evaluation runs at the model's working resolution (the image processor's size): images and masks go through the
same pipeline as training's validation (``make_transform(..., "none", ...)``: INTER_AREA for images, nearest
neighbour for masks), so the numbers are comparable with the ``eval_*`` metrics training reports.

One streaming pass feeds :class:`~cxrseg.metrics.SegmentationMetrics` (pixel Dice/IoU/AP/best F1 and the Kaggle
mean Dice at ``prob >= 0.5``), writes ``per_image.csv`` row by row, and, with ``search=True``, feeds the same
batches to :func:`~cxrseg.postprocess.search_postprocess`. Only one batch of probabilities is ever held.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrseg.data.dataset import make_transform, rows_to_dataset
from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, list_pairs, read_layout_labels
from cxrseg.errors import UsageError
from cxrseg.files import AtomicCsv, atomic_write_text
from cxrseg.images import to_gray
from cxrseg.inference import Segmenter
from cxrseg.labels import IGNORE_INDEX, binarize_mask, unpack_multilabel
from cxrseg.metrics import SegmentationMetrics, dice_from_counts
from cxrseg.plots import PRCurve, PredictionExample, plot_pr_curve
from cxrseg.postprocess import POSTPROCESS_FILENAME, PostProcess, search_postprocess

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
"""Probability threshold of the reported Dice, IoU and Kaggle Dice (as in training's evaluation)."""

SEARCH_TOP_THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
SEARCH_MIN_AREAS_AT_1024 = (0, 250, 500, 1000, 1500, 2000, 3000, 4000, 6000)
"""min_area grid in pixels at 1024², scaled to the working size by :func:`search_grid` (SIIM 1st place: 2000)."""
SEARCH_BOTTOM_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def search_grid(image_size: int) -> tuple[tuple[float, ...], tuple[int, ...], tuple[float, ...]]:
    """The triplet grid (top thresholds, min areas in pixels at ``image_size``², bottom thresholds).

    The areas are :data:`SEARCH_MIN_AREAS_AT_1024` times ``(image_size / 1024)²``, rounded, duplicates dropped. The
    grid contains (0.5, 0, 0.5), plain binarisation, so the search never scores below it.
    """
    ratio = (image_size / 1024) ** 2
    areas = tuple(sorted({round(a * ratio) for a in SEARCH_MIN_AREAS_AT_1024}))
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
    dataset.set_transform(_with_ids(make_transform(segmenter.labels, "none", pre.size[0], pre.mean, pre.std)))
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
    planes; ignored pixels count in neither area (as :func:`cxrseg.metrics.dice_score`)."""
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


def stream_predictions(
    segmenter: Segmenter, loader: DataLoader, tta: str = "none"
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(image ids, probs float32 [B, K, S, S], target uint8 [B, K, S, S], masks uint8 [B, K, S, S]) per batch;
    masks follow the segmenter's rule (post-processing or ``prob >= 0.5``)."""
    for batch in tqdm(loader, desc="evaluating", unit="batch"):
        probs = segmenter.probabilities(batch["pixel_values"], tta)
        target = target_planes(segmenter, batch["labels"])
        masks = torch.from_numpy(segmenter.rule.apply(probs.flatten(0, 1))).view(probs.shape)
        yield batch["image_id"], probs, target, masks


def image_results(image_ids: Sequence[str], target: torch.Tensor, masks: torch.Tensor) -> list[ImageResult]:
    """Per-image counts and Dice (:func:`cxrseg.metrics.dice_from_counts`) of a batch."""
    intersection, pred_area, truth_area = (x.numpy() for x in plane_counts(masks, target))
    dice = dice_from_counts(intersection, pred_area, truth_area)
    return [ImageResult(i, truth_area[b], pred_area[b], dice[b]) for b, i in enumerate(image_ids)]


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvaluationResult:
    """metrics: what ``metrics.json`` holds. search_table: the grid, best first (empty without a search).
    best_postprocess / postprocess_path: the winner of a search and where it was saved."""

    metrics: dict
    out_dir: Path
    search_table: list[dict] = field(default_factory=list)
    best_postprocess: PostProcess | None = None
    postprocess_path: Path | None = None


def default_out_dir(segmenter: Segmenter, split: str) -> Path:
    """``MODEL/evaluation/<split>`` for a local model; ``./evaluation/<owner>--<name>/<split>`` for a Hub id."""
    if segmenter.is_local:
        return segmenter.model_dir / "evaluation" / split
    return Path("evaluation") / segmenter.source.replace("/", "--") / split


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


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
    ``pr_curve.png`` to ``out_dir`` (default :func:`default_out_dir`).

    metrics.json: the :class:`~cxrseg.metrics.SegmentationMetrics` values at ``prob >= 0.5`` (dice, iou,
    kaggle_dice, ap, best_f1, best_threshold, num_images, num_positive_images; multi-label: per class too), plus
    num_predicted_positive_images (images with any predicted pixel) and kaggle_dice_rule (the mean of
    per_image.csv's Dice, under the mask rule in effect: ``postprocess`` when set), and the run's settings. NaN is
    written as null.
    per_image.csv: image_id, class, truth_area, predicted_area, dice (pixels at the working size; the mask rule
    in effect). With ``search``: the post-processing grid search (single-foreground models) on the same pass; the
    winner is saved as ``postprocess.json`` next to a local model (in ``out_dir`` for a Hub model) and the full
    table as ``postprocess_search.csv``.
    """
    names = segmenter.output_names
    if search and len(names) != 1:
        raise UsageError(
            f"--search-postprocess needs a model with one foreground class; {segmenter.source} has "
            f"{len(names)} ({', '.join(names)})."
        )
    rows, described = split_rows(segmenter, data_root, split)
    out = Path(out_dir) if out_dir is not None else default_out_dir(segmenter, split)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "Evaluating %s on %d images: %s, at %dx%d%s.",
        segmenter.source,
        len(rows),
        described,
        segmenter.image_size,
        segmenter.image_size,
        ", hflip TTA" if tta == "hflip" else "",
    )

    metrics = SegmentationMetrics(threshold=THRESHOLD, num_classes=len(names), class_names=names)
    counters = {"dice_sum": np.zeros(len(names)), "predicted_positive_images": 0}
    loader = evaluation_loader(segmenter, rows, batch_size, num_workers)

    with AtomicCsv(out / "per_image.csv", ("image_id", "class", "truth_area", "predicted_area", "dice")) as table:

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            """Updates the metrics and per_image.csv, and yields (probs, target): [B, S, S] for one class (what
            search_postprocess and SegmentationMetrics(num_classes=1) take), else [B, K, S, S]."""
            for image_ids, probs, target, masks in stream_predictions(segmenter, loader, tta):
                scored = (probs[:, 0], target[:, 0]) if len(names) == 1 else (probs, target)
                metrics.update(*scored)
                for result in image_results(image_ids, target, masks):
                    counters["dice_sum"] += result.dice
                    counters["predicted_positive_images"] += bool(result.predicted_area.any())
                    for k, name in enumerate(names):
                        table.writerow(
                            (
                                result.image_id,
                                name,
                                int(result.truth_area[k]),
                                int(result.predicted_area[k]),
                                f"{result.dice[k]:.6f}",
                            )
                        )
                yield scored

        best, search_table = None, []
        if search:  # the search consumes the stream: still one pass over the images
            best, search_table = search_postprocess(batches(), *search_grid(segmenter.image_size))
        else:
            for _ in batches():
                pass

    values = metrics.compute()
    kaggle_rule = counters["dice_sum"] / values["num_images"]
    result = {
        "model": segmenter.source,
        "data": str(data_root),
        "split": split,
        "images": described,
        "image_size": segmenter.image_size,
        "tta": tta,
        "threshold": THRESHOLD,
        **values,
        "num_predicted_positive_images": counters["predicted_positive_images"],
        "postprocess": None if segmenter.postprocess is None else dataclasses.asdict(segmenter.postprocess),
        "kaggle_dice_rule": float(kaggle_rule.mean()),
    }
    if len(names) > 1:
        result.update({f"kaggle_dice_rule/{name}": float(v) for name, v in zip(names, kaggle_rule)})
    evaluation = EvaluationResult(result, out, search_table)
    if search:
        evaluation.best_postprocess = best
        evaluation.postprocess_path = best.save(
            segmenter.model_dir if segmenter.is_local else out / POSTPROCESS_FILENAME
        )
        result["search"] = {
            "postprocess": dataclasses.asdict(best),
            "kaggle_dice": search_table[0]["kaggle_dice"],
            "saved_to": str(evaluation.postprocess_path),
            "grid_points": len(search_table),
        }
        with AtomicCsv(
            out / "postprocess_search.csv", ("top_threshold", "min_area", "bottom_threshold", "kaggle_dice")
        ) as grid_table:
            for row in search_table:
                grid_table.writerow(
                    (row["top_threshold"], row["min_area"], row["bottom_threshold"], f"{row['kaggle_dice']:.6f}")
                )
    plot_pr_curve(
        [
            PRCurve(name, *metrics.pr_curve(k), values["ap"] if len(names) == 1 else values[f"ap/{name}"])
            for k, name in enumerate(names)
        ],
        out / "pr_curve.png",
        title=f"{Path(segmenter.source).name}: {split}, {int(values['num_images'])} images at "
        f"{segmenter.image_size}x{segmenter.image_size}",
    )
    text = json.dumps(_json_safe(result), indent=2) + "\n"
    atomic_write_text(out / "metrics.json", text)
    logger.info("Wrote %s, %s and %s.", out / "metrics.json", out / "per_image.csv", out / "pr_curve.png")
    return evaluation


def summary_table(evaluation: EvaluationResult) -> str:
    """A short plain-text table of the headline metrics, and the before/after table of a search."""
    m = evaluation.metrics

    def fmt(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

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
    if evaluation.search_table:
        best = evaluation.best_postprocess
        lines += [
            "Post-processing search (Kaggle mean Dice on this split; the winner is tuned on it, so it is optimistic):",
            f"  {'threshold 0.5':<44}{fmt(m['kaggle_dice'])}",
        ]
        if m["postprocess"] is not None:
            p = m["postprocess"]
            lines.append(
                f"  {'previous postprocess.json':<44}{fmt(m['kaggle_dice_rule'])}   "
                f"(top {p['top_threshold']}, area {p['min_area']}, bottom {p['bottom_threshold']})"
            )
        label = f"best: top {best.top_threshold}, area {best.min_area}, bottom {best.bottom_threshold}"
        lines.append(f"  {label:<44}{fmt(evaluation.search_table[0]['kaggle_dice'])}")
        lines.append(f"  saved to {evaluation.postprocess_path}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- examples for pictures

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
    segmenter: Segmenter,
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
    rows, _ = split_rows(segmenter, data_root, split)
    results = []
    for image_ids, _, target, masks in stream_predictions(
        segmenter, evaluation_loader(segmenter, rows, batch_size, num_workers), tta
    ):
        results += image_results(image_ids, target, masks)
    by_id = {row.image_id: row for row in rows}
    examples = []
    for result, category in select_examples(results, n):
        row = by_id[result.image_id]
        image, truth = _read_pair(segmenter, row)
        image, truth = segmenter.preprocessor.resize(image, truth)
        probs = segmenter.probabilities(segmenter.preprocessor.to_pixel_values(image).unsqueeze(0), tta)[0]
        truth = torch.from_numpy(np.ascontiguousarray(truth.transpose(2, 0, 1) if truth.ndim == 3 else truth))
        planes = target_planes(segmenter, truth.unsqueeze(0).long() if truth.ndim == 2 else truth.unsqueeze(0))[0]
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


def _read_pair(segmenter: Segmenter, row: IndexedImage) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 gray image, mask as class indices [H, W] or planes [H, W, C]) of a layout row, as training reads it."""
    with Image.open(row.image_path) as image, Image.open(row.mask_path) as mask_image:
        image, mask = to_gray(np.asarray(image)), np.asarray(mask_image)
    labels = segmenter.labels
    return image, unpack_multilabel(mask, labels.num_labels) if labels.multilabel else binarize_mask(mask)
