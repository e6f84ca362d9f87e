"""Evaluate a trained model on a split of the PNG layout in constant memory, and tune its mask rule there: the
single-split driver of the evaluation engine (:mod:`cxrseg.evaluation.engine`, one source).

The model predicts at its working resolution (the image processor's size), on the stream of
:mod:`cxrseg.evaluation.stream`; the predictions are scored at each image's original (stored) size by default, as
Kaggle scores, or at the working size, comparable with the ``eval_*`` metrics training reports
(:mod:`cxrseg.evaluation.engine`, score size).
:mod:`cxrseg.evaluation.examples` streams the same predictions to choose the images of a picture.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cxrseg.evaluation.engine import (
    THRESHOLD,
    EvaluationOptions,
    Source,
    effective_score_size,
    prior_of,
    run_sources,
    save_tuned_rule,
    search_shape,
    stored_sizes,
    write_outputs,
)
from cxrseg.evaluation.report import EvaluationResult, scored_at_words
from cxrseg.evaluation.stream import split_rows
from cxrseg.files import EVALUATION, check_output_folder, mark_output
from cxrseg.inference.ensemble import predictions_made
from cxrseg.inference.predictor import Predictor
from cxrseg.postprocessing.lookup import check_score_size

logger = logging.getLogger(__name__)


def default_out_dir(segmenter: Predictor, name: str) -> Path:
    """``MODEL/evaluation/<name>`` for a local model; ``./evaluation/<owner>--<name>/<name>`` for a Hub id. name:
    what is scored (:attr:`cxrseg.evaluation.stream.Selection.name`: the split, or the data folder's name)."""
    if segmenter.is_local:
        return segmenter.model_dir / "evaluation" / name
    return Path("evaluation") / segmenter.source.replace("/", "--") / name


def evaluate(
    segmenter: Predictor,
    data_root: str | os.PathLike,
    split: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    tta: str = "none",
    batch_size: int = 8,
    num_workers: int = 0,
    search: bool = False,
    score_size: str = "original",
    rule_mismatch: str = "error",
) -> EvaluationResult:
    """Evaluate ``segmenter`` on ``split`` of ``data_root`` (:func:`~cxrseg.evaluation.stream.split_rows`: on the
    model's training data its ``val`` images by default; any other dataset whole by default) and write
    ``metrics.json``, ``per_image.csv`` and ``pr_curve.png`` to ``out_dir`` (default :func:`default_out_dir`; new,
    empty or an earlier evaluation, apart from ``data_root``: :func:`cxrseg.files.check_output_folder`). tta,
    batch_size, num_workers, search: :class:`~cxrseg.evaluation.engine.EvaluationOptions`.

    Beside every metric, its baselines on the same images (:mod:`cxrseg.evaluation.baselines`):
    ``empty_mask_dice``, ``empty_mask_kaggle_dice`` and, for a model saved with its prior mask,
    ``prior_mask_dice`` and ``prior_mask_kaggle_dice`` (per class ``<key>/<class>`` for several classes).

    score_size: "original" (each image at its stored mask's size, as Kaggle scores) or "working" (the model's
    working size, as training's evaluation): :mod:`cxrseg.evaluation.engine`. Every score, area and the search are
    at that size; metrics.json says which (``score_size``, ``scored_sizes``). A mask rule tuned at the other size
    (its provenance's ``score_size``) is refused, or applied with a warning when ``rule_mismatch`` is "warn"
    (:func:`~cxrseg.postprocessing.lookup.check_score_size`).

    metrics.json: the run's settings, then :meth:`~cxrseg.evaluation.engine.EvaluationPass.results`: the
    :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` values at ``prob >= 0.5`` (dice, iou, kaggle_dice, ap,
    best_f1, best_threshold, num_images, num_positive_images; multi-label: per class too),
    num_predicted_positive_images (images with any predicted pixel), kaggle_dice_rule and dice_rule (per-image mean
    and dataset Dice under the mask rule in effect: ``postprocess`` when set). NaN is written as null.
    per_image.csv: image_id, class, truth_area, predicted_area, dice (pixels at the score size; the mask rule
    in effect). With ``search``: the mask rule's grid search (one triplet per class for a multi-output model)
    on the same pass, reported under ``search`` (:func:`~cxrseg.evaluation.report.search_results`); the winner is
    saved as ``postprocess.json`` next to a local model (in ``out_dir`` for a Hub model; a CV folder's ensemble: its
    own rule, replacing the out-of-fold one) with its provenance (the TTA, single model or ensemble of which
    members, working size, score size, data and split) and the full table as ``postprocess_search.csv``.
    """
    options = EvaluationOptions(tta, batch_size, num_workers, search, score_size)
    rows, described, split = split_rows(segmenter, data_root, split)
    if search:
        search_shape(rows, segmenter.image_size, score_size)  # one size at "original", before anything is written
    scoring = effective_score_size(score_size, stored_sizes(rows), segmenter.image_size)
    if segmenter.postprocess is not None:
        check_score_size(segmenter.postprocess, scoring, segmenter.source, mismatch=rule_mismatch)
    out = Path(out_dir) if out_dir is not None else default_out_dir(segmenter, split)
    check_output_folder(out, EVALUATION, inputs=[data_root])
    mark_output(out, EVALUATION)
    logger.info(
        "Evaluating %s on %d images: %s, at %dx%d%s, scored at the %s size.",
        segmenter.source,
        len(rows),
        described,
        segmenter.image_size,
        segmenter.image_size,
        ", hflip TTA" if tta == "hflip" else "",
        scoring,
    )
    run = run_sources([Source(segmenter, rows, prior=prior_of(segmenter))], out / "per_image.csv", options)
    metrics = {
        "model": segmenter.source,
        "data": str(data_root),
        "split": split,
        "images": described,
        "image_size": segmenter.image_size,
        **run.scored_at(),
        "tta": tta,
        "threshold": THRESHOLD,
        **run.results(segmenter.postprocess),
    }
    evaluation = EvaluationResult(metrics, out)
    if search:
        rule_dir = segmenter.model_dir if segmenter.is_local else out
        made = predictions_made(segmenter, tta)
        provenance = {**made, "score_size": run.effective_score_size(), "data": str(data_root), "split": split}
        metrics["search"] = save_tuned_rule(evaluation, run.search(), rule_dir, provenance)
    title = f"{Path(segmenter.source).name}: {split}, {int(metrics['num_images'])} images, {scored_at_words(metrics)}"
    write_outputs(evaluation, run, title)
    return evaluation
