"""Mask post-processing: the SIIM-ACR 1st-place "triplet" rule, one per class for multi-output models, and its
streaming grid search.

The rule (per image): keep the prediction only if at least ``min_area`` pixels have ``prob >= top_threshold``;
a kept prediction is ``prob >= bottom_threshold``, a dropped one is empty. A confident core gates the image
(fighting false positives on the ~78% of SIIM images without pneumothorax) while the lower threshold recovers the
lesion's full extent. The winners' best at 1024² was top 0.75, area 2000, bottom 0.3.

A model with several outputs (multi-label ChestX-Det) gets one triplet per class (:class:`ClassPostProcess`), each
tuned on its own class: a class whose probabilities stay below 0.5 gets a lower threshold instead of an empty mask.

Thresholds follow the project convention of :mod:`cxrseg.metrics`: ``>=``, compared in float32; with the defaults
(0.5, 0, 0.5) the rule is plain binarisation at 0.5, exactly what ``SegmentationMetrics(threshold=0.5)`` scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrseg.files import atomic_write_text
from cxrseg.metrics import _CHUNK_PIXELS, ArrayLike, _as_tensor, _check_probs, _count, _split_target, dice_from_counts

logger = logging.getLogger(__name__)

POSTPROCESS_FILENAME = "postprocess.json"


def _check_threshold(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def _check_area(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (pixels), got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class PostProcess:
    """The triplet rule (module docstring).

    top_threshold: probability in [0, 1] a pixel must reach (``>=``) to count towards ``min_area``.
    min_area: pixels (at ``image_size``) at or above ``top_threshold`` needed to keep an image's mask; 0 keeps all.
    bottom_threshold: probability in [0, 1] that binarises a kept mask (``prob >= bottom_threshold``).
    image_size: side in pixels of the square images ``min_area`` was counted at; None if unknown. When set,
        :meth:`apply` only accepts ``[image_size, image_size]`` maps (use :meth:`scaled` for other sizes).
    """

    top_threshold: float = 0.5
    min_area: int = 0
    bottom_threshold: float = 0.5
    image_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_threshold", _check_threshold(self.top_threshold, "top_threshold"))
        object.__setattr__(self, "bottom_threshold", _check_threshold(self.bottom_threshold, "bottom_threshold"))
        object.__setattr__(self, "min_area", _check_area(self.min_area, "min_area"))
        if self.image_size is not None:
            if (
                isinstance(self.image_size, bool)
                or not isinstance(self.image_size, (int, np.integer))
                or self.image_size <= 0
            ):
                raise ValueError(f"image_size must be a positive integer or None, got {self.image_size!r}.")
            object.__setattr__(self, "image_size", int(self.image_size))

    def apply(self, probs: ArrayLike) -> np.ndarray:
        """Binary masks from foreground probabilities, each [H, W] plane gated on its own.

        probs: float [H, W], [B, H, W] or [B, K, H, W] in [0, 1], numpy or torch (any device).
        Returns uint8 0/1 numpy of the same shape.
        """
        probs = _as_tensor(probs, "probs")
        if probs.ndim not in (2, 3, 4):
            raise ValueError(f"probs must be [H, W], [B, H, W] or [B, K, H, W], got shape {tuple(probs.shape)}.")
        size = tuple(probs.shape[-2:])
        if self.image_size is not None and size != (self.image_size, self.image_size):
            raise ValueError(
                f"PostProcess.min_area is counted at {self.image_size}x{self.image_size} but probs are "
                f"{size[0]}x{size[1]}; use .scaled({size[0]}) for square images of that size."
            )
        probs = _check_probs(probs)
        batch = probs.reshape(-1, *size)
        keep = (batch >= self.top_threshold).sum((1, 2)) >= self.min_area
        masks = (batch >= self.bottom_threshold) & keep.view(-1, 1, 1)
        return masks.view(probs.shape).to(torch.uint8).cpu().numpy()

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray:
        """Binary masks uint8 0/1 [K, H, W] of one image's probabilities float32 [K, h, w] (working size, where
        ``min_area`` is counted); with ``probs_at_size`` (the same at another size, e.g. the original image's), a
        kept mask is ``probs_at_size >= bottom_threshold`` there."""
        return _masks_at_size(self.apply(probs), probs_at_size, [self.bottom_threshold] * probs.shape[0])

    def with_image_size(self, image_size: int) -> PostProcess:
        """A copy that says ``min_area`` is counted at ``image_size`` (nothing rescaled)."""
        return dataclasses.replace(self, image_size=image_size)

    def scaled(self, image_size: int) -> PostProcess:
        """A copy for square images of side ``image_size``: min_area times the pixel-area ratio, rounded."""
        if self.image_size is None:
            raise ValueError("PostProcess.scaled needs image_size, the size min_area was counted at; it is None.")
        ratio = (image_size / self.image_size) ** 2
        return dataclasses.replace(self, min_area=round(self.min_area * ratio), image_size=image_size)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temporary file, then rename) to ``path``, or to ``path/postprocess.json`` if
        ``path`` is a directory. Returns the file written."""
        return _save(self.to_dict(), path)

    def to_dict(self) -> dict:
        """What :meth:`save` writes: ``{top_threshold, min_area, bottom_threshold, image_size}``."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PostProcess:
        """Read a file written by :meth:`save` (a file, or a directory holding ``postprocess.json``).
        Unknown keys or invalid values raise ValueError naming the key and the file; missing keys take defaults."""
        path = _resolve(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}).") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in fields:
                raise ValueError(f"Unknown key {key!r} in {path}; expected some of {fields}.")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / POSTPROCESS_FILENAME if path.is_dir() else path


def _masks_at_size(kept: np.ndarray, probs_at_size: torch.Tensor | None, bottoms: Sequence[float]) -> np.ndarray:
    """Masks [K, H, W] of planes ``kept`` (uint8 [K, h, w], the rule applied at the working size): as they are, or
    at ``probs_at_size``'s size (float32 [K, H, W]) as ``probs >= bottom`` of each plane that was kept."""
    if probs_at_size is None:
        return kept
    keep = torch.from_numpy(kept.reshape(kept.shape[0], -1).any(1)).view(-1, 1, 1)
    bottom = torch.tensor(bottoms, dtype=torch.float32).view(-1, 1, 1)
    return ((probs_at_size >= bottom) & keep).to(torch.uint8).numpy()


@dataclass(frozen=True)
class ClassPostProcess:
    """One triplet per output class (multi-label models): ``rules[k]`` (a :class:`PostProcess`) applies to plane k.

    classes: the output names, in output order. image_size: as :class:`PostProcess`'s, shared by every rule.
    Saved as ``{"image_size": S, "classes": {name: {"top_threshold", "min_area", "bottom_threshold"}, ...}}``.
    """

    classes: tuple[str, ...]
    rules: tuple[PostProcess, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "rules", tuple(self.rules))
        if len(self.classes) != len(self.rules) or not self.rules:
            raise ValueError(
                f"ClassPostProcess needs one rule per class: {len(self.classes)} classes, {len(self.rules)} rules."
            )
        if len({rule.image_size for rule in self.rules}) != 1:
            raise ValueError("Every rule of a ClassPostProcess must have the same image_size.")

    @property
    def image_size(self) -> int | None:
        return self.rules[0].image_size

    def apply(self, probs: ArrayLike) -> np.ndarray:
        """Binary masks uint8 0/1 of probabilities float [K, H, W] or [B, K, H, W] (K = number of classes)."""
        probs = _as_tensor(probs, "probs")
        if probs.ndim not in (3, 4) or probs.shape[-3] != len(self.rules):
            raise ValueError(
                f"probs must be [K, H, W] or [B, K, H, W] with K = {len(self.rules)} classes, got {tuple(probs.shape)}."
            )
        planes = [rule.apply(probs[..., k, :, :]) for k, rule in enumerate(self.rules)]
        return np.stack(planes, axis=-3)

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray:
        """As :meth:`PostProcess.masks`, each class with its own rule."""
        return _masks_at_size(self.apply(probs), probs_at_size, [rule.bottom_threshold for rule in self.rules])

    def scaled(self, image_size: int) -> ClassPostProcess:
        """A copy for square images of side ``image_size`` (:meth:`PostProcess.scaled` of every rule)."""
        return ClassPostProcess(self.classes, tuple(rule.scaled(image_size) for rule in self.rules))

    def with_image_size(self, image_size: int) -> ClassPostProcess:
        """A copy whose rules say that ``min_area`` is counted at ``image_size`` (nothing rescaled)."""
        return ClassPostProcess(self.classes, tuple(rule.with_image_size(image_size) for rule in self.rules))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (see the class docstring) to ``path`` or ``path/postprocess.json``."""
        return _save(self.to_dict(), path)

    def to_dict(self) -> dict:
        """What :meth:`save` writes (see the class docstring)."""
        classes = {
            name: {key: value for key, value in dataclasses.asdict(rule).items() if key != "image_size"}
            for name, rule in zip(self.classes, self.rules)
        }
        return {"image_size": self.image_size, "classes": classes}


def _save(rule: dict, path: str | os.PathLike) -> Path:
    """Write ``rule`` as JSON atomically to ``path`` or ``path/postprocess.json``; returns the file written."""
    path = _resolve(path)
    atomic_write_text(path, json.dumps(rule, indent=2) + "\n")
    return path


def load_postprocess(path: str | os.PathLike) -> PostProcess | ClassPostProcess:
    """Read a ``postprocess.json`` (a file, or a folder holding one): one triplet (:meth:`PostProcess.load`) or,
    with a ``classes`` key, one per class. Raises ValueError naming the file and the key."""
    path = _resolve(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not (isinstance(data, dict) and "classes" in data):
        return PostProcess.load(path)
    unknown = sorted(set(data) - {"classes", "image_size"})
    if unknown or not isinstance(data["classes"], dict) or not data["classes"]:
        raise ValueError(
            f"{path}: expected {{'image_size': ..., 'classes': {{name: triplet, ...}}}}; got keys {sorted(data)}."
        )
    rules = []
    for name, triplet in data["classes"].items():
        if not isinstance(triplet, dict) or not set(triplet) <= {"top_threshold", "min_area", "bottom_threshold"}:
            raise ValueError(
                f"{path}: class {name!r} must map to top_threshold, min_area and bottom_threshold; got {triplet!r}."
            )
        try:
            rules.append(PostProcess(**triplet, image_size=data.get("image_size")))
        except ValueError as err:
            raise ValueError(f"{path}: class {name!r}: {err}") from err
    return ClassPostProcess(tuple(data["classes"]), tuple(rules))


def _triplet_counts(
    probs: torch.Tensor, target: torch.Tensor, tops: Sequence[float], bottoms: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pixel counts for the grid: top_area [T, B] (``prob >= top``, all pixels), intersection and
    pred_area [Bt, B] (``prob >= bottom`` on non-ignored pixels), truth_area [B]; all int64 numpy.

    probs: float [B, H, W]; target: [B, H, W] 0/1/IGNORE_INDEX. Images are taken a few at a time so temporaries
    stay small (as in ``SegmentationMetrics.update``).
    """
    probs, target = probs.reshape(probs.shape[0], -1), target.to(probs.device).reshape(probs.shape[0], -1)
    step = max(1, _CHUNK_PIXELS // max(probs.shape[1], 1))
    counts = []
    for start in range(0, probs.shape[0], step):
        chunk = _check_probs(probs[start : start + step])
        positive, valid = _split_target(target[start : start + step])
        rows = [_count(chunk >= t) for t in tops]
        for b in bottoms:
            predicted = (chunk >= b).logical_and_(valid)
            rows += [_count(predicted & positive), _count(predicted)]
        counts.append(torch.stack([*rows, _count(positive)]))
    counts = torch.cat(counts, 1).cpu().numpy()  # [T + 2 Bt + 1, B]
    top_area, pairs = counts[: len(tops)], counts[len(tops) : -1]
    return top_area, pairs[0::2], pairs[1::2], counts[-1]


class TripletSearch:
    """The triplet grid scored on streamed batches, per output class, in constant memory.

    top_thresholds, min_areas, bottom_thresholds: the grid (probabilities; pixels at the images' size). num_classes:
    K output planes, each searched on its own. For every class and grid point (T tops x A areas x Bt bottoms) it
    keeps the sum over images of the per-image Dice (:func:`~cxrseg.metrics.dice_from_counts`, empty/empty = 1) and
    the pixel sums behind the dataset Dice, exactly as ``PostProcess(...).apply`` then
    :class:`~cxrseg.metrics.SegmentationMetrics` would score them (the min_area gate counts all pixels, ignored
    ones included, as ``apply`` cannot see the target). Per batch, the counts cost one pass per top threshold and
    one per bottom threshold; the grid is then pure broadcasting. Searches over disjoint image sets add up
    (:meth:`merged`): cross-validation tunes on some folds' tables and scores on another's.
    """

    def __init__(
        self,
        top_thresholds: Sequence[float],
        min_areas: Sequence[int],
        bottom_thresholds: Sequence[float],
        num_classes: int = 1,
    ) -> None:
        self.tops = [_check_threshold(t, "top_thresholds") for t in top_thresholds]
        self.areas = [_check_area(a, "min_areas") for a in min_areas]
        self.bottoms = [_check_threshold(b, "bottom_thresholds") for b in bottom_thresholds]
        if not (self.tops and self.areas and self.bottoms):
            raise ValueError(
                "The search needs at least one value in each of top_thresholds, min_areas and bottom_thresholds."
            )
        self.num_classes = num_classes
        shape = (num_classes, len(self.tops), len(self.areas), len(self.bottoms))
        self.dice_sums = np.zeros(shape, dtype=np.float64)  # Σ per-image Dice
        self.intersection = np.zeros(shape, dtype=np.int64)  # Σ |prediction ∩ truth| pixels
        self.predicted = np.zeros(shape, dtype=np.int64)  # Σ predicted pixels
        self.truth = np.zeros(num_classes, dtype=np.int64)  # Σ truth pixels
        self.num_images = 0
        self.size: tuple[int, int] | None = None

    def add(self, probs: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: probs float [B, H, W] (one class) or [B, K, H, W] in [0, 1]; target the same shape, 0/1 with
        IGNORE_INDEX (255) excluded; numpy or torch. Every batch must have the same H, W (min_area is in pixels)."""
        probs, target = _as_tensor(probs, "probs"), _as_tensor(target, "target")
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
                probs[:, k], target[:, k], self.tops, self.bottoms
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
        total = TripletSearch(self.tops, self.areas, self.bottoms, self.num_classes)
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
        true (as :class:`~cxrseg.metrics.SegmentationMetrics`)."""
        return dice_from_counts(self.intersection, self.predicted, self.truth[:, None, None, None])

    def best(self) -> list[tuple[int, int, int]]:
        """Per class, the (top, area, bottom) grid indices of the highest Kaggle mean Dice (ties: the first in grid
        order, top then min_area then bottom)."""
        scores = self.kaggle_dice().reshape(self.num_classes, -1)
        return [np.unravel_index(int(np.argmax(row)), self.dice_sums.shape[1:]) for row in scores]

    def rule(self, index: tuple[int, int, int]) -> PostProcess:
        """The :class:`PostProcess` of grid point ``index``, with ``image_size`` for square images."""
        image_size = self.size[0] if self.size is not None and self.size[0] == self.size[1] else None
        t, a, b = index
        return PostProcess(self.tops[t], self.areas[a], self.bottoms[b], image_size=image_size)

    def best_rule(self, class_names: Sequence[str]) -> PostProcess | ClassPostProcess:
        """The winning rule (:meth:`rule_at` of :meth:`best`)."""
        return self.rule_at(self.best(), class_names)

    def rule_at(
        self, indices: Sequence[tuple[int, int, int]], class_names: Sequence[str]
    ) -> PostProcess | ClassPostProcess:
        """The rule of one grid point per class: a :class:`PostProcess` for one class, a :class:`ClassPostProcess`
        of ``class_names`` (in order) for several."""
        rules = [self.rule(index) for index in indices]
        return rules[0] if self.num_classes == 1 else ClassPostProcess(tuple(class_names), tuple(rules))

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


def search_postprocess(
    prob_batches: Iterable[tuple[ArrayLike, ArrayLike]],
    top_thresholds: Sequence[float],
    min_areas: Sequence[int],
    bottom_thresholds: Sequence[float],
) -> tuple[PostProcess, list[dict]]:
    """Grid-search the triplet of a one-class model for the Kaggle mean Dice in one streaming pass
    (:class:`TripletSearch`).

    prob_batches: iterable of (probs float [B, H, W] in [0, 1], target int [B, H, W] 0/1 with IGNORE_INDEX (255)
        excluded from the Dice), numpy or torch; every batch must have the same H, W (min_area is in pixels).
    top_thresholds, min_areas, bottom_thresholds: the grid (probabilities; pixels).

    Scores every grid point exactly as ``dice_score(PostProcess(...).apply(probs), target)`` averaged over images.
    Memory holds one batch and the grid's tables, independent of the number of images.

    Returns (best PostProcess with image_size = H for square images else None, :meth:`TripletSearch.table`).
    """
    search = TripletSearch(top_thresholds, min_areas, bottom_thresholds)
    for batch_index, (probs, target) in enumerate(tqdm(prob_batches, desc="post-processing search", leave=False)):
        try:
            search.add(probs, target)
        except ValueError as error:
            raise ValueError(f"Batch {batch_index}: {error}") from error
    best = search.rule(search.best()[0])
    table = search.table()
    logger.info(
        "Best post-processing over %d images: %s (Kaggle Dice %.4f).", search.num_images, best, table[0]["kaggle_dice"]
    )
    return best, table
