"""Ensembles: several models' probabilities averaged, as the SIIM-ACR winners and nnU-Net do with their folds.

An :class:`Ensemble` is a :class:`~cxrseg.inference.predictor.Predictor`, as a
:class:`~cxrseg.inference.segmenter.Segmenter` is, so ``cxrseg evaluate``, ``predict``, ``visualize predictions`` and
the app take either. How it predicts:

* its input is prepared at its working size, the largest member's, by that member's image processor;
* each member predicts at its own working size (a smaller member gets the input resized with area interpolation,
  ``F.interpolate(mode="area")``, and normalised with its own mean and std), with its own hflip TTA when asked;
* each member's probabilities are resized (bilinear) to the ensemble's working size and averaged (their sum over
  members divided by their number: an ensemble of one model equals that model exactly); with ``weights``, their
  weighted mean ``sum(w_i p_i) / sum(w_i)``; with ``average="logits"``, the members' logits (each averaged over
  its TTA) are resized and averaged the same way and turned into probabilities once (softmax without background,
  or one sigmoid per class);
* a CV folder's ``ensemble.json`` (``{"weights": [one per fold], "average": "probabilities" | "logits"}``) sets
  both for its folds; ``--ensemble-weights`` and ``--ensemble-average`` override it;
* masks follow the ensemble's rule: a CV folder's ``postprocess.json`` (tuned on its out-of-fold predictions,
  :mod:`cxrseg.evaluation.out_of_fold`) or a file given with ``--postprocess``; else ``prob >= 0.5``. Members' own
  ``postprocess.json`` files are not used.

Members must predict the same classes, in the same order.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrseg.constants import ENSEMBLE_FILENAME, POSTPROCESS_FILENAME
from cxrseg.errors import ModelLoadError
from cxrseg.inference.cv_folder import is_cv_folder, read_cross_validation
from cxrseg.inference.predictor import Predictor
from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.inference.segmenter import Segmenter, load_segmenter
from cxrseg.labels import LabelSet
from cxrseg.postprocessing.lookup import check_rule, find_rule, member_name
from cxrseg.postprocessing.rules import MaskRule, PostProcess

logger = logging.getLogger(__name__)


@dataclass
class Ensemble:
    """Members' averaged probabilities (module docstring). source: what the user named (a CV folder, or the
    members joined by ``+``); model_dir / is_local: the CV folder (its ``evaluation/`` holds the results), else
    None / False. postprocess: the mask rule at the ensemble's working size, None for ``prob >= 0.5``."""

    members: list[Segmenter]
    postprocess: MaskRule | None
    source: str
    model_dir: Path | None = None
    is_local: bool = False
    weights: tuple[float, ...] | None = None
    """One non-negative weight per member (not all 0); None: equal weights."""
    average: str = "probabilities"
    """What is averaged: "probabilities" or "logits" (:data:`AVERAGES`)."""

    def __post_init__(self) -> None:
        if not self.members:
            raise ModelLoadError("An ensemble needs at least one model.")
        if self.average not in AVERAGES:
            raise ModelLoadError(f"Ensemble average must be one of {AVERAGES}, got {self.average!r}.")
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(self.members):
                raise ModelLoadError(
                    f"{len(self.weights)} ensemble weights for {len(self.members)} members ({self.source}); give one "
                    "per member model (a CV folder counts its folds)."
                )
            if not all(math.isfinite(w) and w >= 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ModelLoadError(f"Ensemble weights must be finite, >= 0 and not all 0; got {list(self.weights)}.")
        first = self.members[0]
        for member in self.members[1:]:
            if member.labels.names != first.labels.names or member.labels.multilabel != first.labels.multilabel:
                raise ModelLoadError(
                    f"Ensemble members must predict the same classes: {member.source} predicts "
                    f"{list(member.labels.names)} but {first.source} predicts {list(first.labels.names)}."
                )
        self._reference = max(self.members, key=lambda member: member.image_size)

    @property
    def labels(self) -> LabelSet:
        return self.members[0].labels

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.labels.foreground

    @property
    def preprocessor(self) -> Preprocessor:
        """The input pipeline: the largest member's."""
        return self._reference.preprocessor

    @property
    def image_size(self) -> int:
        return self.preprocessor.size[0]

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def splits(self) -> None:
        """No split is held out from every member (each fold trained on the others' validation images)."""
        return None

    @property
    def rule(self) -> MaskRule:
        """The mask rule in effect (``PostProcess()`` = ``prob >= 0.5`` without one)."""
        return self.postprocess if self.postprocess is not None else PostProcess()

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """pixel_values float32 [B, 3, S, S] (:attr:`preprocessor`'s) → the members' mean probabilities float32
        [B, K, S, S] in [0, 1], on the CPU."""
        size = tuple(pixel_values.shape[-2:])
        total = None
        for k, member in enumerate(self.members):
            inputs = self._member_inputs(member, pixel_values)
            if self.average == "logits":
                part = member.logits(inputs, tta)
                if tuple(part.shape[-2:]) != size:
                    part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            else:
                part = Segmenter.resize_probabilities(member.probabilities(inputs, tta), size)
            if self.weights is not None:
                part = part * self.weights[k]
            total = part if total is None else total + part
        total = total / (len(self.members) if self.weights is None else sum(self.weights))
        return self.members[0].to_probabilities(total) if self.average == "logits" else total

    def _member_inputs(self, member: Segmenter, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ensemble's inputs as ``member`` expects them: its size (area interpolation), its mean and std."""
        mine, theirs = self.preprocessor, member.preprocessor
        if (theirs.size, theirs.mean, theirs.std) == (mine.size, mine.mean, mine.std):
            return pixel_values
        mean, std = (torch.tensor(v, dtype=pixel_values.dtype).view(1, 3, 1, 1) for v in (mine.mean, mine.std))
        images = pixel_values * std + mean
        if tuple(images.shape[-2:]) != tuple(theirs.size):
            images = F.interpolate(images, size=tuple(theirs.size), mode="area")
        mean, std = (torch.tensor(v, dtype=pixel_values.dtype).view(1, 3, 1, 1) for v in (theirs.mean, theirs.std))
        return (images - mean) / std

    resize_probabilities = staticmethod(Segmenter.resize_probabilities)

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray:
        """Binary masks uint8 0/1 [K, H, W] of one image's probabilities (as :meth:`Segmenter.masks`)."""
        return self.rule.masks(probs, probs_at_size)


AVERAGES = ("probabilities", "logits")
"""What an ensemble averages over its members."""


def read_ensemble_settings(cv_folder: Path) -> dict:
    """A CV folder's ``ensemble.json`` (``weights``, ``average``; either may be left out), or {} without one.
    Raises :class:`ModelLoadError` naming the file for anything else."""
    path = cv_folder / ENSEMBLE_FILENAME
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: cannot read the ensemble settings ({error}).") from error
    if not isinstance(settings, dict) or set(settings) - {"weights", "average"}:
        raise ModelLoadError(f'{path}: expected {{"weights": [one per fold], "average": ...}}, got {settings!r}.')
    if "weights" in settings and not (
        isinstance(settings["weights"], list) and all(isinstance(w, int | float) for w in settings["weights"])
    ):
        raise ModelLoadError(f"{path}: weights must be a list of numbers, one per fold; got {settings['weights']!r}.")
    return settings


def load_ensemble(
    models: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    use_postprocess: bool = True,
    postprocess_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    compile: bool = False,
    weights: Sequence[float] | None = None,
    average: str | None = None,
) -> Ensemble:
    """The ensemble of ``models``: model folders, Hub ids or CV folders (each standing for its K fold models).

    Its rule: ``postprocess_path`` if given, else the ``postprocess.json`` of a single CV folder when it has one;
    none with ``use_postprocess=False``. precision, compile: each member's
    (:func:`cxrseg.inference.segmenter.load_segmenter`). weights, average: :class:`Ensemble`'s (one weight per
    member after CV folders are expanded into their folds); None takes a single CV folder's ``ensemble.json``, else
    equal weights and probabilities. Raises :class:`ModelLoadError` for unfinished folds or members that predict
    different classes (naming the member).
    """
    folders: list[str | os.PathLike] = []
    for model in models:
        folders += read_cross_validation(model).fold_dirs if is_cv_folder(model) else [model]
    running = {"device": device, "precision": precision, "compile": compile}
    members = [load_segmenter(folder, use_postprocess=False, **running) for folder in folders]
    single_cv = len(models) == 1 and is_cv_folder(models[0])
    settings = read_ensemble_settings(Path(models[0])) if single_cv else {}
    mixing = {
        "weights": weights if weights is not None else settings.get("weights"),
        "average": average or settings.get("average", "probabilities"),
    }
    if single_cv:
        ensemble = Ensemble(members, None, str(models[0]), Path(models[0]), True, **mixing)
    else:
        ensemble = Ensemble(members, None, "+".join(Path(str(m)).name for m in models), **mixing)
    if use_postprocess:
        default = Path(models[0]) / POSTPROCESS_FILENAME if single_cv else None
        ensemble.postprocess = find_rule(
            postprocess_path, default, ensemble.labels, ensemble.image_size, ensemble.source
        )
    logger.info("Ensemble of %d models (%s) at %d².", len(members), ensemble.source, ensemble.image_size)
    return ensemble


def predictions_made(predictor: Predictor, tta: str) -> dict:
    """How ``predictor`` makes its predictions, as a rule's provenance records it
    (:func:`cxrseg.postprocessing.lookup.check_rule`): ``tta``, ``kind`` ("ensemble" or "single"), ``members``
    (:func:`~cxrseg.postprocessing.lookup.member_name` of each model) and ``image_size`` (the working size)."""
    if isinstance(predictor, Ensemble):
        members = [member_name(member.source) for member in predictor.members]
        mixing = {"weights": list(predictor.weights) if predictor.weights else None, "average": predictor.average}
        return {"tta": tta, "kind": "ensemble", "members": members, "image_size": predictor.image_size, **mixing}
    return {
        "tta": tta,
        "kind": "single",
        "members": [member_name(predictor.source)],
        "image_size": predictor.image_size,
    }


def load_models(
    models: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    tta: str | None = None,
    rule_mismatch: str = "error",
    weights: Sequence[float] | None = None,
    average: str | None = None,
    **loading: Any,
) -> Predictor:
    """What a ``--model`` option names: one model folder or Hub id → its
    :class:`~cxrseg.inference.segmenter.Segmenter`; a CV folder or several models → their :class:`Ensemble`
    (:func:`load_ensemble`). tta: the TTA the predictions will use; when given, the mask rule in effect must have
    been tuned on predictions made the same way (:func:`~cxrseg.postprocessing.lookup.check_rule`, with
    ``rule_mismatch`` "error" or "warn"). weights, average: an ensemble's (:func:`load_ensemble`). loading:
    :func:`~cxrseg.inference.segmenter.load_segmenter`'s keywords (device, use_postprocess, postprocess_path,
    precision, compile), passed to every model."""
    models = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    if len(models) == 1 and not is_cv_folder(models[0]):
        if weights is not None or average is not None:
            raise ModelLoadError(
                f"Ensemble weights and average need several models or a CV folder; {models[0]} is one."
            )
        predictor = load_segmenter(models[0], **loading)
    else:
        predictor = load_ensemble(models, **loading, weights=weights, average=average)
    if tta is not None and predictor.postprocess is not None:
        check_rule(predictor.postprocess, predictions_made(predictor, tta), predictor.source, mismatch=rule_mismatch)
    return predictor
