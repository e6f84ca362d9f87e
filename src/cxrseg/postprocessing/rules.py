"""The mask rule: probabilities → binary masks. Its role is :class:`MaskRule`; its two forms are the SIIM-ACR
1st-place "triplet" (:class:`PostProcess`) and one triplet per class for multi-output models
(:class:`ClassPostProcess`); it is saved as ``postprocess.json``. Where a model's rule is found, read and saved:
:mod:`cxrseg.postprocessing.lookup`; its grid search: :mod:`cxrseg.evaluation.rule_search`.

The rule (per image): keep the prediction only if at least ``min_area`` pixels have ``prob >= top_threshold``;
a kept prediction is ``prob >= bottom_threshold``, a dropped one is empty. A confident core gates the image
(fighting false positives on the ~78% of SIIM images without pneumothorax) while the lower threshold recovers the
lesion's full extent. The winners' best at 1024² was top 0.75, area 2000, bottom 0.3.

A model with several outputs (multi-label ChestX-Det) gets one triplet per class (:class:`ClassPostProcess`), each
tuned on its own class: a class whose probabilities stay below 0.5 gets a lower threshold instead of an empty mask.

Thresholds follow the project convention of :mod:`cxrseg.evaluation.metrics`: ``>=``, compared in float32; with the
defaults (0.5, 0, 0.5) the rule is plain binarisation at 0.5, exactly what ``SegmentationMetrics(threshold=0.5)``
scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cxrseg.constants import POSTPROCESS_FILENAME
from cxrseg.files import atomic_write_text
from cxrseg.postprocessing.tensors import ArrayLike, as_tensor, check_probs

logger = logging.getLogger(__name__)


class MaskRule(Protocol):
    """What a mask rule is (:class:`PostProcess`, :class:`ClassPostProcess`): how probabilities float32 [K, h, w]
    become binary masks uint8 0/1, with ``min_area`` counted at ``image_size`` (pixels; None if unknown)."""

    @property
    def image_size(self) -> int | None: ...

    def apply(self, probs: ArrayLike) -> np.ndarray: ...

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray: ...

    def scaled(self, image_size: int) -> MaskRule: ...

    def with_image_size(self, image_size: int) -> MaskRule: ...

    def save(self, path: str | os.PathLike) -> Path: ...

    def to_dict(self) -> dict: ...


def check_threshold(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_area(value: int, name: str) -> int:
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
    provenance: how the predictions it was tuned on were made (:func:`cxrseg.postprocessing.lookup.check_rule`:
        ``tta``, ``kind``, ``members``, ``image_size``, ``data``, ``split``); None for a rule written before
        cxrseg recorded it, or made by hand. Not part of the rule's identity (equality ignores it).
    """

    top_threshold: float = 0.5
    min_area: int = 0
    bottom_threshold: float = 0.5
    image_size: int | None = None
    provenance: dict | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_threshold", check_threshold(self.top_threshold, "top_threshold"))
        object.__setattr__(self, "bottom_threshold", check_threshold(self.bottom_threshold, "bottom_threshold"))
        object.__setattr__(self, "min_area", check_area(self.min_area, "min_area"))
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
        probs = as_tensor(probs, "probs")
        if probs.ndim not in (2, 3, 4):
            raise ValueError(f"probs must be [H, W], [B, H, W] or [B, K, H, W], got shape {tuple(probs.shape)}.")
        size = tuple(probs.shape[-2:])
        if self.image_size is not None and size != (self.image_size, self.image_size):
            raise ValueError(
                f"PostProcess.min_area is counted at {self.image_size}x{self.image_size} but probs are "
                f"{size[0]}x{size[1]}; use .scaled({size[0]}) for square images of that size."
            )
        probs = check_probs(probs)
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
        """What :meth:`save` writes: ``{top_threshold, min_area, bottom_threshold, image_size}`` and
        ``provenance`` when known."""
        rule = dataclasses.asdict(self)
        if rule["provenance"] is None:
            del rule["provenance"]
        return rule

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
    provenance: dict | None = dataclasses.field(default=None, compare=False, repr=False)
    """As :class:`PostProcess`'s (saved once, next to ``classes``)."""

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
        probs = as_tensor(probs, "probs")
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
        return ClassPostProcess(self.classes, tuple(rule.scaled(image_size) for rule in self.rules), self.provenance)

    def with_image_size(self, image_size: int) -> ClassPostProcess:
        """A copy whose rules say that ``min_area`` is counted at ``image_size`` (nothing rescaled)."""
        rules = tuple(rule.with_image_size(image_size) for rule in self.rules)
        return ClassPostProcess(self.classes, rules, self.provenance)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (see the class docstring) to ``path`` or ``path/postprocess.json``."""
        return _save(self.to_dict(), path)

    def to_dict(self) -> dict:
        """What :meth:`save` writes (see the class docstring)."""
        classes = {
            name: {key: value for key, value in rule.to_dict().items() if key not in ("image_size", "provenance")}
            for name, rule in zip(self.classes, self.rules)
        }
        provenance = {} if self.provenance is None else {"provenance": self.provenance}
        return {"image_size": self.image_size, "classes": classes, **provenance}


def scaled_to_shape(rule: MaskRule, height: int, width: int) -> MaskRule:
    """``rule`` for images of ``height`` x ``width`` pixels: ``min_area`` times the pixel-area ratio
    ``height * width / image_size²``, rounded (:meth:`PostProcess.scaled` for a square); a non-square shape gets
    ``image_size`` None, so that :meth:`PostProcess.apply` takes it. A rule without ``image_size`` is returned as it
    is."""
    if rule.image_size is None:
        return rule
    if height == width:
        return rule.scaled(height)
    if isinstance(rule, ClassPostProcess):
        rules = tuple(scaled_to_shape(one, height, width) for one in rule.rules)
        return ClassPostProcess(rule.classes, rules, rule.provenance)
    ratio = height * width / rule.image_size**2
    return dataclasses.replace(rule, min_area=round(rule.min_area * ratio), image_size=None)


def _save(rule: dict, path: str | os.PathLike) -> Path:
    """Write ``rule`` as JSON atomically to ``path`` or ``path/postprocess.json``; returns the file written."""
    path = _resolve(path)
    atomic_write_text(path, json.dumps(rule, indent=2) + "\n")
    return path


def load_postprocess(path: str | os.PathLike) -> MaskRule:
    """Read a ``postprocess.json`` (a file, or a folder holding one): one triplet (:meth:`PostProcess.load`) or,
    with a ``classes`` key, one per class. Raises ValueError naming the file and the key."""
    path = _resolve(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not (isinstance(data, dict) and "classes" in data):
        return PostProcess.load(path)
    unknown = sorted(set(data) - {"classes", "image_size", "provenance"})
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
    return ClassPostProcess(tuple(data["classes"]), tuple(rules), data.get("provenance"))
