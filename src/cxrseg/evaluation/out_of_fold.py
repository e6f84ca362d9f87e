"""Out-of-fold (OOF) evaluation of a CV folder, and the mask rule tuned honestly on it: the out-of-fold driver of the
evaluation engine (:mod:`cxrseg.evaluation.engine`), one source per fold, merged.

Every image of the folds (``OUTPUT_DIR/splits.json``) is scored once, by the one fold model that never trained on
it: one streaming pass per fold feeds

* per fold, :class:`~cxrseg.evaluation.metrics.SegmentationMetrics`: each fold's own figures and their spread;
  merged (:meth:`~cxrseg.evaluation.metrics.SegmentationMetrics.merged`), the OOF metrics (the same definitions as
  ``cxrseg evaluate``, computed over the images of all folds pooled), and ``per_image.csv`` with a ``fold`` column;
* with ``search``, one :class:`~cxrseg.evaluation.rule_search.TripletSearch` per fold (one triplet per class for
  multi-output models). **Tuned on OOF**: the rule that is best over all folds' images, saved as
  ``OUTPUT_DIR/postprocess.json`` (the ensemble's rule); its score is optimistic, since it is tuned on the images it
  is scored on. **Cross-validated**: for each fold k, the rule best on the other folds' images, scored on fold k's;
  pooled over the folds (per-image Dice summed over every image, dataset Dice from pooled pixel counts), an
  estimate of what the tuned rule gives on new images.

Outputs (default ``OUTPUT_DIR/evaluation/val/``): ``metrics.json``, ``per_image.csv``, ``pr_curve.png``, and with
``search`` ``postprocess_search.csv`` (the grid over all OOF images).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, read_layout_labels
from cxrseg.evaluation.engine import (
    THRESHOLD,
    EvaluationOptions,
    EvaluationPass,
    Source,
    prior_of,
    run_sources,
    save_tuned_rule,
    write_outputs,
)
from cxrseg.evaluation.metrics import SUMMARY_KEYS, dice_from_counts
from cxrseg.evaluation.report import EvaluationResult, scored_at_words
from cxrseg.evaluation.rule_search import TripletSearch
from cxrseg.files import EVALUATION, check_output_folder, mark_output
from cxrseg.inference.cv_folder import CrossValidationRun, read_cross_validation
from cxrseg.inference.predictor import Predictor
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import LabelSet
from cxrseg.postprocessing.lookup import member_name

logger = logging.getLogger(__name__)


def evaluate_out_of_fold(
    cv_folder: str | os.PathLike,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    options: EvaluationOptions | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
) -> EvaluationResult:
    """Evaluate the CV folder ``cv_folder`` out of fold on ``data_root`` (the layout it was trained on) and write
    the outputs (module docstring) to ``out_dir`` (default ``cv_folder/evaluation/val``). options: how the folds
    are run and whether to search (default :class:`~cxrseg.evaluation.engine.EvaluationOptions`). device,
    precision, compile: how each fold model runs (:func:`cxrseg.inference.segmenter.load_segmenter`).

    Scores are at ``options.score_size`` (:mod:`cxrseg.evaluation.engine`: by default each image's original size,
    as Kaggle scores; ``score_size`` and ``scored_sizes`` in metrics.json say which), the tuned rule's ``min_area``
    in those pixels.

    metrics.json: the settings (``checkpoint_chosen_on``: what each fold's checkpoint was chosen on, from
    ``cv.json``); the OOF metrics at ``prob >= 0.5`` (keys as
    :func:`cxrseg.evaluation.evaluate.evaluate`'s); ``folds``: each fold's metrics (with ``fold`` and ``model``);
    ``fold_spread``: for dice, iou, kaggle_dice and ap, the mean, sample standard deviation (ddof 1), min and max
    over folds; with ``search``, ``search`` holds ``tuned_on_oof`` (:func:`~cxrseg.evaluation.report.search_results`
    plus ``saved_to``) and ``cross_validated`` (``kaggle_dice``, ``dice``, per class under ``classes`` for several
    outputs, ``holds_out``: :data:`CROSS_VALIDATED_HOLDS_OUT`, and per fold the rule tuned without it and its scores
    on it).
    """
    options = options or EvaluationOptions()
    run = read_cross_validation(cv_folder)
    root = Path(data_root)
    out = Path(out_dir) if out_dir is not None else run.root / "evaluation" / "val"
    check_output_folder(out, EVALUATION, inputs=[data_root])
    mark_output(out, EVALUATION)
    loading = {"device": device, "use_postprocess": False, "precision": precision, "compile": compile}
    scores = run_sources(_fold_sources(run, root, loading), out / "per_image.csv", options, extra_columns=("fold",))
    fold_metrics = [
        {"fold": fold, "model": str(folder), **part.metrics.compute()}
        for fold, (folder, part) in enumerate(zip(run.fold_dirs, scores.parts))
    ]
    num_images = sum(len(fold["val"]) for fold in run.folds)
    size = scores.image_size
    results = {
        "model": str(run.root),
        "data": str(root),
        "split": "val",
        "images": f"out of fold: each of the {num_images} images of {run.root}/splits.json by the one of its "
        f"{run.num_folds} fold models that never trained on it",
        "checkpoint_chosen_on": run.checkpoint_chosen_on,
        "image_size": size,
        **scores.scored_at(),
        "tta": options.tta,
        "threshold": THRESHOLD,
        **scores.results(None),
        "folds": fold_metrics,
        "fold_spread": _spread(fold_metrics),
    }
    evaluation = EvaluationResult(results, out)
    if options.search:
        results["search"] = {
            "tuned_on_oof": save_tuned_rule(
                evaluation, scores.search(), run.root, _provenance(run, root, options, scores)
            ),
            "cross_validated": cross_validated_search([part.search for part in scores.parts]),
        }
    title = f"{run.root.name}: out of fold, {num_images} images, {scored_at_words(results)}"
    write_outputs(evaluation, scores, title=title)
    return evaluation


def _provenance(run: CrossValidationRun, root: Path, options: EvaluationOptions, scores: EvaluationPass) -> dict:
    """How the out-of-fold predictions were made and scored (the tuned rule's provenance): each image by one fold
    model."""
    return {
        "tta": options.tta,
        "kind": "out_of_fold",
        "members": [member_name(folder) for folder in run.fold_dirs],
        "image_size": scores.image_size,
        "score_size": scores.effective_score_size(),
        "data": str(root),
        "split": "val (out of fold)",
        "checkpoint_chosen_on": run.checkpoint_chosen_on,
    }


def _fold_sources(run: CrossValidationRun, root: Path, loading: dict) -> Iterator[Source]:
    """Each fold's model (loaded with ``loading``, when its turn comes) and validation images, checked against
    fold 0's outputs and working size."""
    for fold, folder in enumerate(run.fold_dirs):
        segmenter = load_segmenter(folder, **loading)
        if fold == 0:
            first = (segmenter.output_names, segmenter.image_size)
            index = _layout_index(root, segmenter.labels)
        rows = _fold_rows(run, fold, segmenter, first, index, root)
        logger.info("Fold %d: %d images by %s.", fold, len(rows), folder)
        yield Source(segmenter, rows, (fold,), prior_of(segmenter))
        del segmenter  # one fold model in memory at a time


def _fold_rows(
    run: CrossValidationRun,
    fold: int,
    segmenter: Predictor,
    first: tuple[tuple[str, ...], int],
    index: dict[str, IndexedImage],
    root: Path,
) -> list[IndexedImage]:
    """The validation images of ``fold``, after checking that its model belongs with the first fold's (``first``:
    its output names and working size) and to the fold, and that the data holds them."""
    folder = run.fold_dirs[fold]
    names, size = first
    if (segmenter.output_names, segmenter.image_size) != first:
        raise DataError(
            f"{folder} predicts {list(segmenter.output_names)} at {segmenter.image_size}² but fold 0 "
            f"{list(names)} at {size}²: the folds of {run.root} do not belong together."
        )
    val = run.folds[fold]["val"]
    # a fold trained with cv_checkpoint: inner holds its inner split and the fold's validation images as "held_out"
    own = segmenter.splits or {}
    if own.get("held_out", own.get("val")) != val or set(val) & set(own.get("train", [])):
        raise DataError(f"{folder}/splits.json is not fold {fold} of {run.root}/splits.json.")
    missing = [image_id for image_id in val if image_id not in index]
    if missing:
        raise DataError(
            f"{len(missing)} of fold {fold}'s {len(val)} validation images are not in {root}/images/train "
            f"(first: {missing[0]!r}); is this the data the folds were trained on?"
        )
    return [index[image_id] for image_id in val]


def _layout_index(root: Path, labels: LabelSet) -> dict[str, IndexedImage]:
    """The validated training images of the layout at ``root`` by image id, after checking its classes."""
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist (expected the PNG layout the folds were trained on).")
    declared = read_layout_labels(root)
    if declared.names != labels.names:
        raise DataError(
            f"{root} holds {declared.task} data with classes {list(declared.names)} but the folds predict "
            f"{list(labels.names)}."
        )
    return {row.image_id: row for row in index_layout(root, "train", labels)}


def _spread(fold_metrics: list[dict]) -> dict:
    """For each summary metric, its mean, sample standard deviation (ddof 1), min and max over the folds."""
    spread = {}
    for key in SUMMARY_KEYS:
        values = np.array([m[key] for m in fold_metrics], dtype=np.float64)
        spread[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return spread


CROSS_VALIDATED_HOLDS_OUT = (
    "the rule's choice only: fold k's images are scored by the rule tuned on the other folds' out-of-fold "
    "predictions, and those predictions come from fold models that trained on fold k's images (so it is not nested; "
    "which checkpoint each fold kept: checkpoint_chosen_on). For a number held out from every choice, score the "
    "ensemble on a split no fold trained on (--split test)"
)
"""What the cross-validated rule estimate does and does not hold out (written into ``metrics.json``)."""


def cross_validated_search(fold_searches: list[TripletSearch]) -> dict:
    """The cross-validated estimate of the tuned mask rule (module docstring): per fold, the rule best on the
    other folds' images and its Kaggle mean Dice and dataset Dice on this fold's; pooled over folds, per class and
    as means over classes."""
    names = fold_searches[0].class_names
    num_classes = len(names)
    dice_sum = np.zeros(num_classes)
    pixels = np.zeros((3, num_classes), dtype=np.int64)  # intersection, predicted, truth
    folds = []
    for k, held_out in enumerate(fold_searches):
        others = [s for j, s in enumerate(fold_searches) if j != k]
        best = others[0].merged(others[1:]).best()
        kaggle, dice = held_out.kaggle_dice(), held_out.dataset_dice()
        for c, (t, a, b) in enumerate(best):
            dice_sum[c] += held_out.dice_sums[c, t, a, b]
            pixels[:, c] += (held_out.intersection[c, t, a, b], held_out.predicted[c, t, a, b], held_out.truth[c])
        folds.append(
            {
                "fold": k,
                "postprocess": held_out.rule_at(best).to_dict(),
                "kaggle_dice": float(np.mean([kaggle[c][best[c]] for c in range(num_classes)])),
                "dice": float(np.mean([dice[c][best[c]] for c in range(num_classes)])),
            }
        )
    num_images = sum(s.num_images for s in fold_searches)
    kaggle_pooled = dice_sum / num_images
    dice_pooled = dice_from_counts(*pixels)
    result = {
        "kaggle_dice": float(kaggle_pooled.mean()),
        "dice": float(dice_pooled.mean()),
        "holds_out": CROSS_VALIDATED_HOLDS_OUT,
        "folds": folds,
    }
    if num_classes > 1:
        result["classes"] = {
            name: {"kaggle_dice": float(kaggle_pooled[c]), "dice": float(dice_pooled[c])}
            for c, name in enumerate(names)
        }
    return result
