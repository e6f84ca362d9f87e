"""Streaming segmentation metrics in constant memory: Dice, IoU, the SIIM Kaggle mean Dice, pixel AP and best F1.

Conventions used everywhere in cxrseg (metrics and :mod:`cxrseg.postprocessing.rules`):

* A pixel is predicted foreground at threshold ``t`` when ``prob >= t`` (greater *or equal*), with the
  probability and ``t`` both compared in float32.
* Target pixels equal to :data:`cxrseg.labels.IGNORE_INDEX` (255) are excluded from every count.
* Per-image Dice is ``2|A∩B| / (|A| + |B|)`` and is 1 when prediction and truth are both empty (the SIIM-ACR
  competition rule); :func:`dice_from_counts` is the single place that defines it.

:class:`SegmentationMetrics` keeps only counters: a ``[C, 2, num_bins]`` histogram of quantised probabilities for
negative/positive pixels, dataset-level TP/FP/FN at the threshold, and running sums of per-image Dice. Its memory
does not grow with the number of images, so it never stores logits. The pieces: ``update`` adds a batch's counts;
:func:`ranking_metrics` and :func:`precision_recall_curve` read one class's histogram; ``class_scores`` gives every
metric per class (:class:`ClassScores`) and :func:`name_metrics` names them, the one key layout of ``compute``.

Distributed evaluation: the instance holds the counts of the data it was given and does no all-reduce. The Trainer
gathers predictions across processes before calling :meth:`SegmentationMetrics.update`, so every process (or only
the main one) sees all images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrseg.labels import IGNORE_INDEX
from cxrseg.postprocessing.tensors import ArrayLike, as_tensor, check_probs, split_target


def dice_from_counts(
    intersection: ArrayLike | int, pred_area: ArrayLike | int, truth_area: ArrayLike | int
) -> np.ndarray:
    """Per-image Dice ``2|A∩B| / (|A| + |B|)`` from pixel counts, 1.0 where both areas are 0 (SIIM-ACR rule).

    intersection, pred_area, truth_area: pixel counts, broadcastable shapes (scalars or arrays, any int dtype).
    Returns float64 with the broadcast shape (a 0-d array for scalar input).
    """
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(pred_area, dtype=np.float64) + np.asarray(truth_area, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total == 0, 1.0, 2.0 * intersection / total)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of one image's binary prediction against its truth, 1.0 when both are empty (SIIM-ACR rule).

    pred: [H, W] (any shape equal to ``truth``), bool or 0/1; non-zero is foreground.
    truth: same shape, bool or int 0/1; pixels equal to IGNORE_INDEX (255) are excluded from both.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"dice_score: pred shape {pred.shape} != truth shape {truth.shape}.")
    positive = truth == 1
    valid = truth != IGNORE_INDEX
    if not np.all(positive | (truth == 0) | ~valid):
        raise ValueError(f"dice_score: truth values must be 0, 1 or {IGNORE_INDEX}, got {np.unique(truth)[:10]}.")
    predicted = (pred != 0) & valid
    return float(
        dice_from_counts(
            np.count_nonzero(predicted & positive), np.count_nonzero(predicted), np.count_nonzero(positive)
        )
    )


CHUNK_PIXELS = 1 << 20
"""Default pixels per step of :meth:`SegmentationMetrics.update` and
:meth:`~cxrseg.evaluation.rule_search.TripletSearch.update` (4 MB of float32)."""


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Per-row count of True in a bool [K, P] mask, int64 [K]."""
    # Summing the uint8 view into int32 is faster on CPU than bool.sum(); P < 2**31 pixels per plane.
    return mask.view(torch.uint8).sum(1, dtype=torch.int32).long()


def _quantise(probs: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin index int32 of float32 probs in [0, 1]: ``floor(prob * num_bins)``, 1.0 clamped into the last bin."""
    # int32 indices keep torch.bincount faster than int64 on CPU.
    return (probs * num_bins).to(torch.int32).clamp_(max=num_bins - 1)


def _lower_bin_edges(num_bins: int) -> np.ndarray:
    """float32 [num_bins]: edge k is the smallest float32 ``v`` with ``_quantise(v) >= k``.

    Defined through the quantiser itself (rather than as ``k / num_bins``) so that ``prob >= edge_k`` holds exactly
    when the prob's bin is ``>= k``: a threshold read off the histogram reproduces the histogram's counts exactly.
    """
    k = torch.arange(num_bins, dtype=torch.int32)
    edges = (torch.arange(num_bins, dtype=torch.float64) / num_bins).float()
    zero, one = torch.zeros(1), torch.ones(1)
    for _ in range(64):  # rounding puts k / num_bins within a few ulps of the true edge
        lower = torch.nextafter(edges, zero)
        step_down = (_quantise(lower, num_bins) >= k) & (k > 0)
        step_up = _quantise(edges, num_bins) < k
        if not (step_down.any() or step_up.any()):
            break
        edges = torch.where(step_down, lower, torch.where(step_up, torch.nextafter(edges, one), edges))
    edges[0] = 0.0
    return edges.numpy()


def _descending_counts(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative (TP, FP) int64 [N] for ``prob >= edge_k`` with k descending from N-1 to 0, and the positive total,
    of one class's ``[negative/positive, N]`` histogram."""
    tp = np.cumsum(hist[1, ::-1])
    fp = np.cumsum(hist[0, ::-1])
    return tp, fp, int(tp[-1])


def ranking_metrics(hist: np.ndarray, bin_edges: np.ndarray) -> tuple[float, float, float]:
    """(ap, best_f1, best_threshold) of one class from its int64 ``[negative/positive, N]`` histogram and the float32
    [N] lower bin edges (definitions in :class:`SegmentationMetrics`); NaNs without positive pixels."""
    tp, fp, num_positive = _descending_counts(hist)
    if num_positive == 0:
        return float("nan"), float("nan"), float("nan")
    recall_gain = np.diff(tp, prepend=0) / num_positive
    precision = tp / np.maximum(tp + fp, 1)  # 0/1 where nothing is predicted yet; recall_gain is 0 there
    f1 = 2 * tp / (tp + fp + num_positive)
    ap = float(np.sum(recall_gain * precision))
    best = int(np.argmax(f1))  # first maximum in descending order: the highest threshold
    return ap, float(f1[best]), float(bin_edges[len(bin_edges) - 1 - best])


def precision_recall_curve(hist: np.ndarray, bin_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel precision-recall curve of one class's ``[negative/positive, N]`` histogram, in sklearn's
    ``precision_recall_curve`` convention (see :meth:`SegmentationMetrics.pr_curve`)."""
    tp, fp, num_positive = _descending_counts(hist)
    nonempty = (hist.sum(0) > 0)[::-1]  # descending bin order, like tp/fp
    tp, fp = tp[nonempty][::-1], fp[nonempty][::-1]
    thresholds = bin_edges[::-1][nonempty][::-1].copy()
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_positive if num_positive else np.ones_like(precision)
    return np.append(precision, 1.0), np.append(recall, 0.0), thresholds


@dataclass(frozen=True)
class ClassScores:
    """Every metric of every class, float64 [C] each (definitions in :class:`SegmentationMetrics`)."""

    dice: np.ndarray
    iou: np.ndarray
    kaggle_dice: np.ndarray
    ap: np.ndarray
    best_f1: np.ndarray
    best_threshold: np.ndarray
    num_positive_images: np.ndarray


SUMMARY_KEYS = ("dice", "iou", "kaggle_dice", "ap")
"""The headline metrics: a binary model's values, or a multi-label model's unweighted means over classes."""

PER_CLASS_KEYS = ("dice", "iou", "ap", "kaggle_dice", "num_positive_images")
"""A multi-label model's per-class metrics, named ``<metric>/<class name>``."""


def _mean_over_classes(values: np.ndarray) -> float:
    """Unweighted mean over the classes that have a value (NaN is the ap of a class without positive pixels, left
    out); NaN if none has."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def name_metrics(scores: ClassScores, num_images: int, class_names: Sequence[str]) -> dict[str, float]:
    """The dict :meth:`SegmentationMetrics.compute` returns, every value a float, in this order.

    Binary (one class): :data:`SUMMARY_KEYS`, ``best_f1``, ``best_threshold``, ``num_images``,
    ``num_positive_images``. Multi-label: :data:`PER_CLASS_KEYS` as ``<metric>/<class name>`` class by class, then
    :data:`SUMMARY_KEYS` as means over classes (:func:`_mean_over_classes`), then ``num_images``.
    """
    if len(class_names) == 1:
        named = {key: float(getattr(scores, key)[0]) for key in (*SUMMARY_KEYS, "best_f1", "best_threshold")}
        named["num_images"] = float(num_images)
        named["num_positive_images"] = float(scores.num_positive_images[0])
        return named
    named = {
        f"{key}/{name}": float(getattr(scores, key)[i]) for i, name in enumerate(class_names) for key in PER_CLASS_KEYS
    }
    named.update({key: _mean_over_classes(getattr(scores, key)) for key in SUMMARY_KEYS})
    named["num_images"] = float(num_images)
    return named


def _histogram_and_counts(
    probs: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    num_bins: int,
    threshold: float,
    chunk_pixels: int = CHUNK_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram int64 [C, 2, N] and per-plane (intersection, predicted area, truth area) int64 [P, 3] at
    ``threshold`` of planes ``probs`` float [P, pixels] against 0/1/IGNORE_INDEX ``target`` [P, pixels], where plane
    p is of class ``p % num_classes``, taken about ``chunk_pixels`` pixels (whole planes) at a time. Raises before
    returning anything on a bad value."""
    c, n = num_classes, num_bins
    # A few planes at a time: temporaries stay ~4 MB, which the allocator reuses, instead of fresh batch-sized
    # buffers (page faults dominated the CPU time).
    hist = torch.zeros(2 * c * n + 1, dtype=torch.int64, device=probs.device)
    counts = []
    step = max(1, chunk_pixels // max(probs.shape[1], 1))
    for start in range(0, probs.shape[0], step):
        chunk = check_probs(probs[start : start + step])
        positive, valid = split_target(target[start : start + step])
        # Histogram: flat index (class * 2 + is_positive) * N + bin; ignored pixels go to one trash bin.
        rows = torch.arange(start, start + chunk.shape[0], device=probs.device, dtype=torch.int32)
        index = _quantise(chunk, n).add_((rows % c * (2 * n)).unsqueeze(1)).add_(positive.to(torch.int32) * n)
        index.masked_fill_(~valid, 2 * c * n)
        hist += torch.bincount(index.view(-1), minlength=2 * c * n + 1)
        predicted = (chunk >= threshold).logical_and_(valid)
        counts.append(torch.stack([count_true(predicted & positive), count_true(predicted), count_true(positive)], 1))
    return hist[: 2 * c * n].view(c, 2, n), torch.cat(counts)


class SegmentationMetrics:
    """Streaming binary or multi-label segmentation metrics (constant memory; see the module docstring).

    threshold: probability threshold for ``dice``, ``iou`` and ``kaggle_dice``; foreground is ``prob >= threshold``.
    num_classes: 1 for binary (probs ``[B, H, W]``), C > 1 for multi-label (probs ``[B, C, H, W]``, one sigmoid
        per class, each class scored independently).
    num_bins: probabilities are quantised into ``num_bins`` equal-width bins ``[k/N, (k+1)/N)`` (1.0 falls in the
        last bin) for AP, best F1 and the PR curve; 10,000 bins keep AP within ~1e-3 of sklearn's exact value.
    class_names: one name per class for the multi-label keys (default ``class_<i>``).
    chunk_pixels: pixels (whole planes) counted per step of :meth:`update`; any value gives the same counts.

    An :class:`~cxrseg.evaluation.accumulator.Accumulator`: :meth:`update` per batch, :meth:`compute`, :meth:`reset`.

    Metric definitions (all pixels of all images pooled unless said otherwise; ignored pixels excluded):

    * ``dice`` = 2TP / (2TP + FP + FN) and ``iou`` = TP / (TP + FP + FN) at ``threshold``; 1.0 when TP+FP+FN = 0.
    * ``kaggle_dice``: mean over images of the per-image Dice at ``threshold`` (:func:`dice_from_counts`).
    * ``ap``: sklearn's ``average_precision_score`` step sum ``Σ (R_n − R_{n−1}) P_n`` over descending bin edges,
      all probabilities inside a bin treated as tied. NaN when there is no positive pixel (sklearn returns 0 with a
      warning there); in the multi-label mean such classes are excluded.
    * ``best_f1`` / ``best_threshold`` (binary only): the highest pixel F1 over the bin edges, where predicting
      ``prob >= best_threshold`` reproduces ``best_f1`` exactly (ties: the highest edge); NaN with no positive pixel.
    * ``num_images``; ``num_positive_images`` (images with at least one positive pixel; per class in multi-label);
      counts are returned as floats like every value of the dict.

    Multi-label keys: ``dice/<name>``, ``iou/<name>``, ``ap/<name>``, ``kaggle_dice/<name>``,
    ``num_positive_images/<name>``, and ``dice``, ``iou``, ``kaggle_dice``, ``ap`` as unweighted means over classes
    (``ap`` over the classes that have positive pixels; NaN if none has). Note that a class with neither truth nor
    prediction anywhere scores dice = iou = 1 by the empty/empty rule. The layout is :func:`name_metrics`'s.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        num_classes: int = 1,
        num_bins: int = 10_000,
        class_names: Sequence[str] | None = None,
        chunk_pixels: int = CHUNK_PIXELS,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if num_bins < 1 or 2 * num_classes * num_bins + 1 >= 2**31:
            raise ValueError(f"num_bins must be in [1, 2**30 / num_classes), got {num_bins}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}.")
        self.threshold = float(threshold)
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
        )
        self.chunk_pixels = chunk_pixels
        self.bin_edges = _lower_bin_edges(num_bins)
        self.reset()

    def reset(self) -> None:
        """Forget all data seen so far."""
        c, n = self.num_classes, self.num_bins
        self._hist = torch.zeros(c, 2, n, dtype=torch.int64)  # [class, negative/positive, bin] pixel counts
        self._tp = torch.zeros(c, dtype=torch.int64)
        self._fp = torch.zeros(c, dtype=torch.int64)
        self._fn = torch.zeros(c, dtype=torch.int64)
        self._dice_sum = np.zeros(c, dtype=np.float64)  # Σ per-image Dice, per class
        self._positive_images = np.zeros(c, dtype=np.int64)
        self._num_images = 0

    def empty(self) -> SegmentationMetrics:
        """A new object with this one's settings and no images."""
        return SegmentationMetrics(self.threshold, self.num_classes, self.num_bins, self.class_names, self.chunk_pixels)

    def merged(self, others: Iterable[SegmentationMetrics]) -> SegmentationMetrics:
        """Metrics over this one's images and those of ``others`` (same threshold, classes and bins): the sums of
        their counts, as if every batch had gone to one object."""
        total = self.empty()
        for part in (self, *others):
            if (part.threshold, part.num_classes, part.num_bins) != (self.threshold, self.num_classes, self.num_bins):
                raise ValueError("Only metrics with the same threshold, classes and bins can be merged.")
            for name in ("_hist", "_tp", "_fp", "_fn", "_dice_sum", "_positive_images"):
                getattr(total, name)[...] += getattr(part, name)
            total._num_images += part._num_images
        return total

    def update(self, probs: ArrayLike, target: ArrayLike) -> None:
        """Add a batch.

        Binary (num_classes=1): probs float [B, H, W] in [0, 1] (foreground probability); target int [B, H, W]
        with 0/1 and IGNORE_INDEX (255) for excluded pixels.
        Multi-label (num_classes=C): probs float [B, C, H, W] (sigmoid per class); target [B, C, H, W] 0/1 (float
        or int), 255 excluded.
        Torch tensors (any device; counting happens there, only the small counts come to the CPU) or numpy arrays.
        """
        probs, target = as_tensor(probs, "probs"), as_tensor(target, "target")
        expected = "[B, H, W]" if self.num_classes == 1 else f"[B, {self.num_classes}, H, W]"
        ndim = 3 if self.num_classes == 1 else 4
        if probs.ndim != ndim or (ndim == 4 and probs.shape[1] != self.num_classes):
            raise ValueError(f"probs must have shape {expected}, got {tuple(probs.shape)}.")
        if target.shape != probs.shape:
            raise ValueError(f"target shape {tuple(target.shape)} != probs shape {tuple(probs.shape)}.")
        if probs.shape[0] == 0:
            return
        batch, c = probs.shape[0], self.num_classes
        hist, counts = _histogram_and_counts(  # one row per (image, class) plane
            probs.reshape(batch * c, -1),
            target.to(probs.device).reshape(batch * c, -1),
            c,
            self.num_bins,
            self.threshold,
            self.chunk_pixels,
        )
        intersection, pred_area, truth_area = counts.view(batch, c, 3).cpu().unbind(2)  # [B, C]

        # All checks passed: commit.
        self._hist += hist.cpu()
        self._tp += intersection.sum(0)
        self._fp += (pred_area - intersection).sum(0)
        self._fn += (truth_area - intersection).sum(0)
        self._dice_sum += dice_from_counts(intersection.numpy(), pred_area.numpy(), truth_area.numpy()).sum(0)
        self._positive_images += (truth_area > 0).sum(0).numpy()
        self._num_images += batch

    def class_scores(self) -> ClassScores:
        """Every metric of every class over everything seen since the last reset."""
        if self._num_images == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update().")
        tp, fp, fn = (x.numpy().astype(np.float64) for x in (self._tp, self._fp, self._fn))
        errors = fp + fn
        ap, best_f1, best_threshold = np.array(
            [ranking_metrics(self._hist[i].numpy(), self.bin_edges) for i in range(self.num_classes)]
        ).T
        return ClassScores(
            dice=np.where(tp + errors == 0, 1.0, 2 * tp / np.maximum(2 * tp + errors, 1)),
            iou=np.where(tp + errors == 0, 1.0, tp / np.maximum(tp + errors, 1)),
            kaggle_dice=self._dice_sum / self._num_images,
            ap=ap,
            best_f1=best_f1,
            best_threshold=best_threshold,
            num_positive_images=self._positive_images.astype(np.float64),
        )

    def compute(self) -> dict[str, float]:
        """The metrics of everything seen since the last reset (keys and definitions in the class docstring)."""
        return name_metrics(self.class_scores(), self._num_images, self.class_names)

    def pr_curve(self, class_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel precision-recall curve of one class in sklearn's ``precision_recall_curve`` convention.

        Returns (precision float64 [K+1], recall float64 [K+1], thresholds float32 [K]): thresholds are the lower
        edges of the K non-empty bins, ascending; element i is for ``prob >= thresholds[i]``; the last precision is
        1 and the last recall 0. Like sklearn, recall is 1 everywhere when the class has no positive pixel.
        """
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class_index {class_index} out of range for {self.num_classes} classes.")
        return precision_recall_curve(self._hist[class_index].numpy(), self.bin_edges)
