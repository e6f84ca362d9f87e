"""Mask post-processing: the SIIM-ACR 1st-place "triplet" rule and its streaming grid search.

The rule (per image): keep the prediction only if at least ``min_area`` pixels have ``prob >= top_threshold``;
a kept prediction is ``prob >= bottom_threshold``, a dropped one is empty. A confident core gates the image
(fighting false positives on the ~78% of SIIM images without pneumothorax) while the lower threshold recovers the
lesion's full extent. The winners' best at 1024² was top 0.75, area 2000, bottom 0.3.

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
        """Binary masks from foreground probabilities.

        probs: float [H, W] or [B, H, W] in [0, 1], numpy or torch (any device).
        Returns uint8 0/1 numpy of the same shape.
        """
        probs = _as_tensor(probs, "probs")
        if probs.ndim not in (2, 3):
            raise ValueError(f"probs must be [H, W] or [B, H, W], got shape {tuple(probs.shape)}.")
        size = tuple(probs.shape[-2:])
        if self.image_size is not None and size != (self.image_size, self.image_size):
            raise ValueError(
                f"PostProcess.min_area is counted at {self.image_size}x{self.image_size} but probs are "
                f"{size[0]}x{size[1]}; use .scaled({size[0]}) for square images of that size."
            )
        probs = _check_probs(probs)
        batch = probs if probs.ndim == 3 else probs.unsqueeze(0)
        keep = (batch >= self.top_threshold).sum((1, 2)) >= self.min_area
        masks = (batch >= self.bottom_threshold) & keep.view(-1, 1, 1)
        return masks.view(probs.shape).to(torch.uint8).cpu().numpy()

    def scaled(self, image_size: int) -> PostProcess:
        """A copy for square images of side ``image_size``: min_area times the pixel-area ratio, rounded."""
        if self.image_size is None:
            raise ValueError("PostProcess.scaled needs image_size, the size min_area was counted at; it is None.")
        ratio = (image_size / self.image_size) ** 2
        return dataclasses.replace(self, min_area=round(self.min_area * ratio), image_size=image_size)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temporary file, then rename) to ``path``, or to ``path/postprocess.json`` if
        ``path`` is a directory. Returns the file written."""
        path = _resolve(path)
        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

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


def search_postprocess(
    prob_batches: Iterable[tuple[ArrayLike, ArrayLike]],
    top_thresholds: Sequence[float],
    min_areas: Sequence[int],
    bottom_thresholds: Sequence[float],
) -> tuple[PostProcess, list[dict]]:
    """Grid-search the triplet for the Kaggle mean Dice in one streaming pass.

    prob_batches: iterable of (probs float [B, H, W] in [0, 1], target int [B, H, W] 0/1 with IGNORE_INDEX (255)
        excluded from the Dice), numpy or torch; every batch must have the same H, W (min_area is in pixels).
    top_thresholds, min_areas, bottom_thresholds: the grid (probabilities; pixels).

    Scores every grid point exactly as ``dice_score(PostProcess(...).apply(probs), target)`` averaged over images
    (the min_area gate counts all pixels, ignored ones included, as ``apply`` cannot see the target). Memory holds
    one batch and a [top, area, bottom] table of Dice sums, independent of the number of images. Per batch, the
    pixel counts cost one pass per top threshold and one per bottom threshold; the grid is then pure broadcasting.

    Returns (best PostProcess with image_size = H for square images else None, table): the table has one dict per
    grid point, ``{top_threshold, min_area, bottom_threshold, kaggle_dice}``, best first (ties keep grid order:
    top, then min_area, then bottom, as given).
    """
    tops = [_check_threshold(t, "top_thresholds") for t in top_thresholds]
    areas = [_check_area(a, "min_areas") for a in min_areas]
    bottoms = [_check_threshold(b, "bottom_thresholds") for b in bottom_thresholds]
    if not (tops and areas and bottoms):
        raise ValueError(
            "search_postprocess needs at least one value in each of top_thresholds, min_areas and bottom_thresholds."
        )
    area_grid = np.array(areas, dtype=np.int64)[None, :, None, None]  # [1, A, 1, 1]
    dice_sums = np.zeros((len(tops), len(areas), len(bottoms)), dtype=np.float64)
    num_images, size = 0, None
    for batch_index, (probs, target) in enumerate(tqdm(prob_batches, desc="post-processing search", leave=False)):
        probs, target = _as_tensor(probs, "probs"), _as_tensor(target, "target")
        if probs.ndim != 3 or target.shape != probs.shape:
            raise ValueError(
                f"Batch {batch_index}: probs and target must both be [B, H, W]; got "
                f"{tuple(probs.shape)} and {tuple(target.shape)}."
            )
        if probs.shape[0] == 0:
            continue
        if size is None:
            size = tuple(probs.shape[1:])
        elif tuple(probs.shape[1:]) != size:
            raise ValueError(
                f"Batch {batch_index}: image size {tuple(probs.shape[1:])} differs from {size}; "
                "min_area is in pixels, so every image must have the same size."
            )
        top_area, intersection, pred_area, truth_area = _triplet_counts(probs, target, tops, bottoms)
        dice_kept = dice_from_counts(intersection, pred_area, truth_area)  # [Bt, B]
        dice_dropped = dice_from_counts(0, 0, truth_area)  # [B]: 1 on empty truth, else 0
        kept = top_area[:, None, None, :] >= area_grid  # [T, A, 1, B]
        dice_sums += np.where(kept, dice_kept[None, None], dice_dropped).sum(-1)
        num_images += probs.shape[0]
    if num_images == 0:
        raise ValueError("search_postprocess got no images.")
    image_size = size[0] if size[0] == size[1] else None
    kaggle_dice = dice_sums / num_images
    table = [
        {"top_threshold": t, "min_area": a, "bottom_threshold": b, "kaggle_dice": float(kaggle_dice[i, j, k])}
        for i, t in enumerate(tops)
        for j, a in enumerate(areas)
        for k, b in enumerate(bottoms)
    ]
    table.sort(key=lambda row: -row["kaggle_dice"])  # stable: ties keep grid order
    top = table[0]
    best = PostProcess(top["top_threshold"], top["min_area"], top["bottom_threshold"], image_size=image_size)
    logger.info("Best post-processing over %d images: %s (Kaggle Dice %.4f).", num_images, best, top["kaggle_dice"])
    return best, table
