"""The search for the mask rule: every (threshold, min_area, bottom) triplet scored on streamed predictions.

:class:`TripletSearch` accumulates, per class and per triplet, what Kaggle's empty-aware mean Dice and the dataset
Dice need; :meth:`TripletSearch.compute` gives the mask rule (:mod:`cxrseg.postprocessing.rules`) that maximises
Kaggle's mean Dice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from cxrseg.evaluation.metrics import CHUNK_PIXELS, count_true, dice_from_counts
from cxrseg.postprocessing.rules import ClassPostProcess, MaskRule, PostProcess, check_area, check_threshold
from cxrseg.postprocessing.tensors import ArrayLike, as_tensor, check_probs, split_target

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


def equal_area_side(height: int, width: int) -> int:
    """The side in pixels of the square with the area of ``height`` x ``width`` (itself for a square), rounded."""
    return height if height == width else round((height * width) ** 0.5)


def _triplet_counts(
    probs: torch.Tensor,
    target: torch.Tensor,
    tops: Sequence[float],
    bottoms: Sequence[float],
    chunk_pixels: int = CHUNK_PIXELS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pixel counts for the grid: top_area [T, B] (``prob >= top``, all pixels), intersection and
    pred_area [Bt, B] (``prob >= bottom`` on non-ignored pixels), truth_area [B]; all int64 numpy.

    probs: float [B, H, W]; target: [B, H, W] 0/1/IGNORE_INDEX. Images are taken about ``chunk_pixels`` pixels
    (whole images) at a time so temporaries stay small (as in ``SegmentationMetrics.update``).
    """
    probs, target = probs.reshape(probs.shape[0], -1), target.to(probs.device).reshape(probs.shape[0], -1)
    step = max(1, chunk_pixels // max(probs.shape[1], 1))
    counts = []
    for start in range(0, probs.shape[0], step):
        chunk = check_probs(probs[start : start + step])
        positive, valid = split_target(target[start : start + step])
        rows = [count_true(chunk >= t) for t in tops]
        for b in bottoms:
            predicted = (chunk >= b).logical_and_(valid)
            rows += [count_true(predicted & positive), count_true(predicted)]
        counts.append(torch.stack([*rows, count_true(positive)]))
    counts = torch.cat(counts, 1).cpu().numpy()  # [T + 2 Bt + 1, B]
    top_area, pairs = counts[: len(tops)], counts[len(tops) : -1]
    return top_area, pairs[0::2], pairs[1::2], counts[-1]


class TripletSearch:
    """The triplet grid scored on streamed batches, per output class, in constant memory.

    top_thresholds, min_areas, bottom_thresholds: the grid (probabilities; pixels at the images' size). num_classes:
    K output planes, each searched on its own. class_names: the K output names of a :class:`ClassPostProcess`
    (default ``class_<i>``). chunk_pixels: pixels (whole images) counted per step; any value gives the same counts.

    For every class and grid point (T tops x A areas x Bt bottoms) it keeps the sum over images of the per-image Dice
    (:func:`~cxrseg.evaluation.metrics.dice_from_counts`, empty/empty = 1) and the pixel sums behind the dataset
    Dice, exactly as ``PostProcess(...).apply`` then :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` would
    score them (the min_area gate counts all pixels, ignored ones included, as ``apply`` cannot see the target). Per
    batch, the counts cost one pass per top threshold and one per bottom threshold; the grid is then pure
    broadcasting. Searches over disjoint image sets add up (:meth:`merged`): cross-validation tunes on some folds'
    tables and scores on another's. An :class:`~cxrseg.evaluation.accumulator.Accumulator`: :meth:`update` per
    batch, :meth:`compute` (the winning rule), :meth:`reset`.
    """

    def __init__(
        self,
        top_thresholds: Sequence[float],
        min_areas: Sequence[int],
        bottom_thresholds: Sequence[float],
        num_classes: int = 1,
        class_names: Sequence[str] | None = None,
        chunk_pixels: int = CHUNK_PIXELS,
    ) -> None:
        self.tops = [check_threshold(t, "top_thresholds") for t in top_thresholds]
        self.areas = [check_area(a, "min_areas") for a in min_areas]
        self.bottoms = [check_threshold(b, "bottom_thresholds") for b in bottom_thresholds]
        if not (self.tops and self.areas and self.bottoms):
            raise ValueError(
                "The search needs at least one value in each of top_thresholds, min_areas and bottom_thresholds."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}.")
        self.num_classes = num_classes
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
        )
        self.chunk_pixels = chunk_pixels
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        shape = (self.num_classes, len(self.tops), len(self.areas), len(self.bottoms))
        self.dice_sums = np.zeros(shape, dtype=np.float64)  # Σ per-image Dice
        self.intersection = np.zeros(shape, dtype=np.int64)  # Σ |prediction ∩ truth| pixels
        self.predicted = np.zeros(shape, dtype=np.int64)  # Σ predicted pixels
        self.truth = np.zeros(self.num_classes, dtype=np.int64)  # Σ truth pixels
        self.num_images = 0
        self.size: tuple[int, int] | None = None

    def update(self, probs: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: probs float [B, H, W] (one class) or [B, K, H, W] in [0, 1]; target the same shape, 0/1 with
        IGNORE_INDEX (255) excluded; numpy or torch. Every batch must have the same H, W (min_area is in pixels)."""
        probs, target = as_tensor(probs, "probs"), as_tensor(target, "target")
        if self.num_classes == 1 and probs.ndim == 3:
            probs, target = probs.unsqueeze(1), target.unsqueeze(1)
        if probs.ndim != 4 or probs.shape[1] != self.num_classes or target.shape != probs.shape:
            expected = "[B, H, W] or [B, 1, H, W]" if self.num_classes == 1 else f"[B, {self.num_classes}, H, W]"
            raise ValueError(
                f"probs and target must both be {expected}; got {tuple(probs.shape)} and {tuple(target.shape)}."
            )
        if probs.shape[0] == 0:
            return
        size = tuple(probs.shape[-2:])
        if self.size is not None and size != self.size:
            raise ValueError(
                f"image size {size} differs from {self.size}; min_area is in pixels, so every image must have the "
                "same size."
            )
        self.size = size
        area_grid = np.array(self.areas, dtype=np.int64)[None, :, None, None]  # [1, A, 1, 1]
        for k in range(self.num_classes):
            top_area, intersection, pred_area, truth_area = _triplet_counts(
                probs[:, k], target[:, k], self.tops, self.bottoms, self.chunk_pixels
            )
            kept = top_area[:, None, None, :] >= area_grid  # [T, A, 1, B]
            dice_kept = dice_from_counts(intersection, pred_area, truth_area)  # [Bt, B]
            dice_dropped = dice_from_counts(0, 0, truth_area)  # [B]: 1 on empty truth, else 0
            self.dice_sums[k] += np.where(kept, dice_kept[None, None], dice_dropped).sum(-1)
            self.intersection[k] += np.where(kept, intersection[None, None], 0).sum(-1)
            self.predicted[k] += np.where(kept, pred_area[None, None], 0).sum(-1)
            self.truth[k] += truth_area.sum()
        self.num_images += probs.shape[0]

    def merged(self, others: Iterable[TripletSearch]) -> TripletSearch:
        """A search holding this one's images and those of ``others`` (same grid and size)."""
        total = TripletSearch(
            self.tops, self.areas, self.bottoms, self.num_classes, self.class_names, self.chunk_pixels
        )
        for part in (self, *others):
            if (part.tops, part.areas, part.bottoms, part.num_classes) != (
                self.tops,
                self.areas,
                self.bottoms,
                self.num_classes,
            ):
                raise ValueError("Only searches over the same grid and classes can be merged.")
            total.dice_sums += part.dice_sums
            total.intersection += part.intersection
            total.predicted += part.predicted
            total.truth += part.truth
            total.num_images += part.num_images
            total.size = total.size or part.size
        return total

    def kaggle_dice(self) -> np.ndarray:
        """Kaggle mean Dice float64 [K, T, A, Bt]: per class, the mean per-image Dice at each grid point."""
        if self.num_images == 0:
            raise ValueError("The post-processing search got no images.")
        return self.dice_sums / self.num_images

    def dataset_dice(self) -> np.ndarray:
        """Dataset (pixel-pooled) Dice float64 [K, T, A, Bt] at each grid point, 1 where nothing is predicted or
        true (as :class:`~cxrseg.evaluation.metrics.SegmentationMetrics`)."""
        return dice_from_counts(self.intersection, self.predicted, self.truth[:, None, None, None])

    def best(self) -> list[tuple[int, int, int]]:
        """Per class, the (top, area, bottom) grid indices of the highest Kaggle mean Dice (ties: the first in grid
        order, top then min_area then bottom)."""
        scores = self.kaggle_dice().reshape(self.num_classes, -1)
        return [np.unravel_index(int(np.argmax(row)), self.dice_sums.shape[1:]) for row in scores]

    def rule(self, index: tuple[int, int, int]) -> PostProcess:
        """The :class:`PostProcess` of grid point ``index``, with ``image_size`` the images' side, or for non-square
        images (scored at their original size) the side of the square of the same pixel area, rounded: min_area
        counts pixels, so :func:`~cxrseg.postprocessing.rules.scaled_to_shape` gives it back at their shape."""
        image_size = None if self.size is None else equal_area_side(*self.size)
        t, a, b = index
        return PostProcess(self.tops[t], self.areas[a], self.bottoms[b], image_size=image_size)

    def compute(self) -> MaskRule:
        """The winning mask rule (:meth:`rule_at` of :meth:`best`): a :class:`PostProcess` for one class, a
        :class:`ClassPostProcess` of :attr:`class_names` for several."""
        return self.rule_at(self.best())

    def rule_at(self, indices: Sequence[tuple[int, int, int]]) -> MaskRule:
        """The rule of one grid point per class: a :class:`PostProcess` for one class, a :class:`ClassPostProcess`
        of :attr:`class_names` (in order) for several."""
        rules = [self.rule(index) for index in indices]
        return rules[0] if self.num_classes == 1 else ClassPostProcess(self.class_names, tuple(rules))

    def table(self, class_index: int = 0) -> list[dict]:
        """One class's grid, best first (ties keep grid order): ``{top_threshold, min_area, bottom_threshold,
        kaggle_dice, dice}`` (dice: the dataset Dice)."""
        kaggle, dice = self.kaggle_dice()[class_index], self.dataset_dice()[class_index]
        table = [
            {
                "top_threshold": t,
                "min_area": a,
                "bottom_threshold": b,
                "kaggle_dice": float(kaggle[i, j, k]),
                "dice": float(dice[i, j, k]),
            }
            for i, t in enumerate(self.tops)
            for j, a in enumerate(self.areas)
            for k, b in enumerate(self.bottoms)
        ]
        table.sort(key=lambda row: -row["kaggle_dice"])  # stable: ties keep grid order
        return table
