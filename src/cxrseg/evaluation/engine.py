"""The evaluation engine: one streaming pass over one or more sources, in constant memory.

A source is a model and the images it scores: a split of one model (:func:`cxrseg.evaluation.evaluate.evaluate`) or
each fold's validation images by its fold model (:func:`cxrseg.evaluation.out_of_fold.evaluate_out_of_fold`). For
every batch of predictions (:func:`cxrseg.evaluation.stream.stream_predictions`) the engine updates three
:class:`~cxrseg.evaluation.accumulator.Accumulator` s:

* per source, :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` at ``prob >= THRESHOLD`` (pixel Dice/IoU/AP/
  best F1 and the Kaggle mean Dice); merged over the sources, the metrics over every image;
* per source with ``search``, a :class:`~cxrseg.evaluation.rule_search.TripletSearch` (one triplet per class for a
  multi-output model); merged over the sources, the search over every image;
* over every source, :class:`RuleScores`: the scores of the mask rule in effect;
* over every source, :class:`~cxrseg.evaluation.baselines.BaselineScores`: what the empty mask and the source's
  prior mask (the training set's mean mask at 0.5) score on the same images;

and writes one ``per_image.csv`` row per image and class. Only one batch of probabilities is ever held.

Score size (:attr:`EvaluationOptions.score_size`): "working" scores the predictions at the model's working size
against the masks resized there (nearest neighbour), as training's evaluation does. "original" scores each image at
its stored mask's size, the size Kaggle scores (1024² for SIIM prepared with ``--image-size 1024``): its
probabilities are resized there bilinearly (:meth:`~cxrseg.inference.predictor.Predictor.resize_probabilities`, as
``cxrseg predict`` does for the masks it writes) and compared with the stored mask, one image at a time; the rule in
effect counts ``min_area`` in those pixels (:func:`~cxrseg.postprocessing.rules.scaled_to_shape`), the search's grid
is in those pixels (so every image must then have one size), and the prior mask baseline is resized there (bilinear,
then ``>= 0.5``). A batch whose images are all stored at the working size is the same at either size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrseg.data.png_layout import DataError, IndexedImage
from cxrseg.data.prior import load_prior_mask
from cxrseg.evaluation.baselines import BaselineScores
from cxrseg.evaluation.metrics import SegmentationMetrics, dice_from_counts
from cxrseg.evaluation.report import EvaluationResult, save_search, search_results, search_table, write_json
from cxrseg.evaluation.rule_search import TripletSearch, equal_area_side, search_grid
from cxrseg.evaluation.stream import ImageResult, PredictedBatch, evaluation_loader, image_results, stream_predictions
from cxrseg.files import AtomicCsv
from cxrseg.inference.ensemble import Ensemble
from cxrseg.inference.predictor import Predictor
from cxrseg.plots import PRCurve, plot_pr_curve
from cxrseg.postprocessing.rules import MaskRule, scaled_to_shape

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
"""Probability threshold of the reported Dice, IoU and Kaggle Dice (as in training's evaluation)."""

PER_IMAGE_COLUMNS = ("image_id", "class", "truth_area", "predicted_area", "dice")
"""The columns of ``per_image.csv`` (areas in pixels at the score size; Dice under the mask rule in effect),
followed by a driver's own (out of fold: ``fold``)."""

SCORE_SIZES = ("original", "working")
"""Where predictions are scored (module docstring): each image's stored size, or the model's working size."""


@dataclass(frozen=True)
class EvaluationOptions:
    """How the sources are run. tta: "none" or "hflip"; batch_size: images per forward pass; num_workers: DataLoader
    processes reading images; search: also grid-search the mask rule on the same pass; score_size: one of
    :data:`SCORE_SIZES` (module docstring)."""

    tta: str = "none"
    batch_size: int = 8
    num_workers: int = 0
    search: bool = False
    score_size: str = "original"

    def __post_init__(self) -> None:
        if self.score_size not in SCORE_SIZES:
            raise ValueError(f"score_size must be one of {SCORE_SIZES}, got {self.score_size!r}.")


def stored_sizes(rows: Iterable[IndexedImage]) -> set[tuple[int, int]]:
    """The (height, width) pixels the images of ``rows`` are stored at."""
    return {(row.height, row.width) for row in rows}


def effective_score_size(score_size: str, sizes: Iterable[tuple[int, int]], image_size: int) -> str:
    """ "original" when ``score_size`` is and some image's size (``sizes``: (height, width) pixels) differs from the
    working size ``image_size``; else "working" (the two are then the same numbers). What a tuned rule's provenance
    records as its ``score_size``."""
    working = {(image_size, image_size)}
    return "original" if score_size == "original" and set(sizes) - working else "working"


def search_shape(rows: Sequence[IndexedImage], image_size: int, score_size: str) -> tuple[int, int]:
    """The (height, width) pixels of the search's ``min_area`` grid: the working size, or at "original" the one size
    every image of ``rows`` is stored at (:class:`DataError` when they differ, since min_area is in pixels)."""
    if score_size == "working":
        return image_size, image_size
    sizes = sorted(stored_sizes(rows))
    if len(sizes) > 1:
        raise _sizes_error(sizes)
    return sizes[0]


def _sizes_error(sizes: Sequence[tuple[int, int]]) -> DataError:
    shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
    return DataError(
        f"The mask rule search at the original size needs images of one size (min_area is in pixels), but these "
        f"are stored at {len(sizes)} sizes ({shown}, height x width): search with --score-size working, or "
        "prepare the data at one size (cxrseg prepare --image-size)."
    )


@dataclass
class Source:
    """A model and the images it scores. extra_columns: this source's values of the driver's ``per_image.csv``
    columns after :data:`PER_IMAGE_COLUMNS` (out of fold: the fold). prior: the model's prior mask at the working
    size (:func:`prior_of`), bool [K, S, S], or None."""

    predictor: Predictor
    rows: Sequence[IndexedImage]
    extra_columns: tuple = ()
    prior: np.ndarray | None = None


def prior_of(predictor: Predictor) -> np.ndarray | None:
    """The prior mask saved with a model (:func:`cxrseg.data.prior.load_prior_mask`) at its working size; an
    ensemble's is its first member's. None when there is none."""
    folder = predictor.members[0].model_dir if isinstance(predictor, Ensemble) else predictor.model_dir
    return load_prior_mask(folder, len(predictor.output_names), predictor.image_size)


class RuleScores:
    """The mask rule in effect, scored over every image (an :class:`~cxrseg.evaluation.accumulator.Accumulator` of
    per-image results): per class the sum of per-image Dice and the pixel counts (intersection, predicted, truth) of
    the rule's masks, and the number of images with any predicted pixel."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.dice_sum = np.zeros(len(self.names))  # float64 [K]
        self.pixel_counts = np.zeros((3, len(self.names)), dtype=np.int64)  # intersection, predicted, truth
        self.predicted_positive_images = 0
        self.num_images = 0

    def update(self, results: Sequence[ImageResult]) -> None:
        """Add a batch's per-image results (:func:`cxrseg.evaluation.stream.image_results`), in order."""
        for result in results:
            self.dice_sum += result.dice
            self.pixel_counts += np.stack([result.intersection, result.predicted_area, result.truth_area])
            self.predicted_positive_images += bool(result.predicted_area.any())
            self.num_images += 1

    def compute(self) -> dict:
        """``num_predicted_positive_images``, ``kaggle_dice_rule`` (the mean over images of the per-image Dice) and
        ``dice_rule`` (the dataset Dice), means over classes; per class too (``<key>/<name>``) for several."""
        kaggle_rule = self.dice_sum / self.num_images
        dice_rule = dice_from_counts(*self.pixel_counts)
        results = {
            "num_predicted_positive_images": self.predicted_positive_images,
            "kaggle_dice_rule": float(kaggle_rule.mean()),
            "dice_rule": float(dice_rule.mean()),
        }
        if len(self.names) > 1:
            for name, kaggle, dice in zip(self.names, kaggle_rule, dice_rule):
                results[f"kaggle_dice_rule/{name}"] = float(kaggle)
                results[f"dice_rule/{name}"] = float(dice)
        return results


def new_search(predictor: Predictor, shape: tuple[int, int]) -> TripletSearch:
    """An empty mask rule search over :func:`~cxrseg.evaluation.rule_search.search_grid` for the model's outputs and
    images of ``shape`` (height, width) pixels (a non-square one: the grid of the square of the same area)."""
    names = predictor.output_names
    return TripletSearch(*search_grid(equal_area_side(*shape), len(names)), num_classes=len(names), class_names=names)


@dataclass
class SourceScores:
    """What one source added up: its metrics at ``prob >= THRESHOLD`` and, with ``search``, its search."""

    metrics: SegmentationMetrics
    search: TripletSearch | None


@dataclass
class EvaluationPass:
    """What :func:`run_sources` added up. names: the K output names; image_size: the working size (pixels);
    parts: per source, in order; rule_scores and baselines: over every source; score_size: as asked
    (:data:`SCORE_SIZES`); sizes: the (height, width) pixels images were scored at."""

    names: tuple[str, ...]
    image_size: int
    parts: list[SourceScores]
    rule_scores: RuleScores
    baselines: BaselineScores
    score_size: str = "working"
    sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def scored_at(self) -> dict:
        """What metrics.json says of the size the scores are at: ``score_size`` ("original" or "working", as asked)
        and ``scored_sizes`` (each size scored at, "HxW" in pixels, height first)."""
        return {"score_size": self.score_size, "scored_sizes": [f"{h}x{w}" for h, w in sorted(self.sizes)]}

    def effective_score_size(self) -> str:
        """:func:`effective_score_size` of the sizes scored at."""
        return effective_score_size(self.score_size, self.sizes, self.image_size)

    def metrics(self) -> SegmentationMetrics:
        """The metrics over every source's images (:meth:`SegmentationMetrics.merged`)."""
        return self.parts[0].metrics.merged(part.metrics for part in self.parts[1:])

    def search(self) -> TripletSearch:
        """The search over every source's images (:meth:`TripletSearch.merged`)."""
        return self.parts[0].search.merged(part.search for part in self.parts[1:])

    def results(self, rule: MaskRule | None) -> dict:
        """The metrics values, ``num_predicted_positive_images``, the rule in effect (``postprocess``: None for
        ``prob >= 0.5``), then ``kaggle_dice_rule`` and ``dice_rule`` (:meth:`RuleScores.compute`), then the
        baselines (:meth:`BaselineScores.compute`)."""
        rule_values = self.rule_scores.compute()
        return {
            **self.metrics().compute(),
            "num_predicted_positive_images": rule_values.pop("num_predicted_positive_images"),
            "postprocess": None if rule is None else rule.to_dict(),
            **rule_values,
            **self.baselines.compute(),
        }

    def pr_curves(self) -> list[PRCurve]:
        """One pixel precision-recall curve per class over every source's images, with its AP."""
        metrics = self.metrics()
        aps = metrics.class_scores().ap
        return [PRCurve(name, *metrics.pr_curve(k), float(aps[k])) for k, name in enumerate(self.names)]


def scored_planes(batch: PredictedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's (probs, target) as the metrics and the search take them: [B, S, S] for one output, else
    [B, K, S, S]."""
    return (batch.probs[:, 0], batch.target[:, 0]) if batch.probs.shape[1] == 1 else (batch.probs, batch.target)


def at_score_size(batch: PredictedBatch, predictor: Predictor) -> Iterator[PredictedBatch]:
    """``batch`` as it is scored: as it is at the working size, or (with ``original_targets``, some not at the
    working size) one image at a time at its stored mask's size: probabilities resized bilinearly
    (:meth:`~cxrseg.inference.predictor.Predictor.resize_probabilities`), the stored mask's target planes, and the
    masks of the rule in effect with ``min_area`` in those pixels (:func:`scaled_to_shape`)."""
    originals, working = batch.original_targets, tuple(batch.probs.shape[-2:])
    if originals is None or all(tuple(target.shape[-2:]) == working for target in originals):
        yield batch
        return
    for image_id, probs, target in zip(batch.image_ids, batch.probs, originals):
        height, width = target.shape[-2:]
        probs = predictor.resize_probabilities(probs, (height, width)).unsqueeze(0)
        masks = torch.from_numpy(scaled_to_shape(predictor.rule, height, width).apply(probs))
        yield PredictedBatch([image_id], probs, target.unsqueeze(0), masks)


def prior_at(prior: np.ndarray | None, shape: tuple[int, int], predictor: Predictor) -> np.ndarray | None:
    """The prior mask bool [K, S, S] at ``shape`` (height, width): resized bilinearly as probabilities, ``>= 0.5``."""
    if prior is None or tuple(prior.shape[1:]) == tuple(shape):
        return prior
    resized = predictor.resize_probabilities(torch.from_numpy(prior).float(), shape)
    return (resized >= 0.5).numpy()


def run_sources(
    sources: Iterable[Source], per_image_path: Path, options: EvaluationOptions, extra_columns: Sequence[str] = ()
) -> EvaluationPass:
    """One streaming pass over every source (the module docstring), writing ``per_image_path``
    (:data:`PER_IMAGE_COLUMNS`, then ``extra_columns``) atomically. ``sources`` may be a generator that loads each
    model when it is reached: only the current source is referenced here. At ``options.score_size`` "original"
    with ``options.search``, every image of every source must have one size (:func:`search_shape`)."""
    rule_scores, baselines, parts, names, image_size = None, None, [], (), 0
    original, searched, sizes = options.score_size == "original", None, set()
    with AtomicCsv(per_image_path, (*PER_IMAGE_COLUMNS, *extra_columns)) as per_image:
        for source in sources:
            predictor = source.predictor
            if rule_scores is None:
                names, image_size = tuple(predictor.output_names), predictor.image_size
                rule_scores, baselines = RuleScores(names), BaselineScores(names)
            metrics = SegmentationMetrics(threshold=THRESHOLD, num_classes=len(names), class_names=names)
            search = None
            if options.search:
                shape = search_shape(source.rows, image_size, options.score_size)
                if searched is not None and shape != searched:
                    raise _sizes_error(sorted({shape, searched}))
                searched, search = shape, new_search(predictor, shape)
            priors = {}  # the prior mask at each size met, resized once
            # the stored masks are read again at their size only where some differ from the working size
            read_original = original and bool(stored_sizes(source.rows) - {(image_size, image_size)})
            loader = evaluation_loader(predictor, source.rows, options.batch_size, options.num_workers, read_original)
            for batch in stream_predictions(predictor, loader, options.tta):
                for scored_batch in at_score_size(batch, predictor):
                    shape = tuple(scored_batch.probs.shape[-2:])
                    sizes.add(shape)
                    if shape not in priors:
                        priors[shape] = prior_at(source.prior, shape, predictor)
                    scored = scored_planes(scored_batch)
                    metrics.update(*scored)
                    results = image_results(scored_batch)
                    rule_scores.update(results)
                    baselines.update(scored_batch.target, priors[shape])
                    write_rows(per_image, names, results, source.extra_columns)
                    if search is not None:  # the search takes the same batches: still one pass over the images
                        search.update(*scored)
            parts.append(SourceScores(metrics, search))
            del source, predictor, loader, priors  # one model in memory at a time
    return EvaluationPass(names, image_size, parts, rule_scores, baselines, options.score_size, sizes)


def write_rows(per_image: AtomicCsv, names: Sequence[str], results: Sequence[ImageResult], extra: Sequence) -> None:
    """One ``per_image.csv`` row per image and class (:data:`PER_IMAGE_COLUMNS`, then ``extra``)."""
    for result in results:
        for k, name in enumerate(names):
            per_image.writerow(
                (
                    result.image_id,
                    name,
                    int(result.truth_area[k]),
                    int(result.predicted_area[k]),
                    f"{result.dice[k]:.6f}",
                    *extra,
                )
            )


def save_tuned_rule(evaluation: EvaluationResult, search: TripletSearch, rule_dir: Path, provenance: dict) -> dict:
    """Record a search's winner in ``evaluation`` and save it (``rule_dir/postprocess.json``, the table as
    ``postprocess_search.csv`` in the output folder); returns :func:`~cxrseg.evaluation.report.search_results`
    plus ``saved_to``. provenance: how the predictions it was tuned on were made, saved with the rule
    (:func:`cxrseg.postprocessing.lookup.check_rule`)."""
    evaluation.best_postprocess = dataclasses.replace(search.compute(), provenance=provenance)
    evaluation.search_table = search_table(search)
    evaluation.postprocess_path = save_search(
        rule_dir, evaluation.out_dir, evaluation.best_postprocess, evaluation.search_table
    )
    return {**search_results(search), "saved_to": str(evaluation.postprocess_path)}


def write_outputs(evaluation: EvaluationResult, run: EvaluationPass, title: str) -> None:
    """Write ``pr_curve.png`` (titled ``title``) and ``metrics.json`` (``evaluation.metrics``) to its folder."""
    out = evaluation.out_dir
    plot_pr_curve(run.pr_curves(), out / "pr_curve.png", title=title)
    write_json(out / "metrics.json", evaluation.metrics)
    logger.info("Wrote %s, %s and %s.", out / "metrics.json", out / "per_image.csv", out / "pr_curve.png")
