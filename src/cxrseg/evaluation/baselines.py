"""What trivial predictors score on the images an evaluation sees, reported beside the model's metrics so that a
number can be read: a Dice of 0.85 on lung fields is poor when a fixed mask gets 0.83.

Two baselines, each scored like the model (:func:`~cxrseg.evaluation.metrics.dice_from_counts`, ignored pixels
excluded) at the working size:

* ``empty_mask``: predicts nothing. Its ``kaggle_dice`` is the fraction of images without the class (the
  empty/empty rule gives them 1); its pooled ``dice`` is 0 wherever the class is present at all.
* ``prior_mask``: predicts the training set's mean mask at 0.5 (:mod:`cxrseg.data.prior`) for every image;
  reported when the model folder holds one (:data:`~cxrseg.constants.PRIOR_MASK_FILENAME`).

Keys (:meth:`BaselineScores.compute`): ``<baseline>_dice`` (pooled) and ``<baseline>_kaggle_dice`` (mean per
image), means over classes, and per class ``<key>/<class>`` for several classes, as the model's own keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cxrseg.evaluation.metrics import dice_from_counts
from cxrseg.labels import IGNORE_INDEX

BASELINES = ("empty_mask", "prior_mask")
BASELINE_KEYS = ("dice", "kaggle_dice")


class BaselineScores:
    """An :class:`~cxrseg.evaluation.accumulator.Accumulator` of the baselines (module docstring) over target
    planes. names: the K classes; prior: bool [K, S, S] (the prior mask at the targets' size) or None; a batch may
    bring its own (several models, each with its prior). The prior mask is reported only when every batch had
    one."""

    def __init__(self, names: Sequence[str], prior: np.ndarray | None = None) -> None:
        self.names = tuple(names)
        self.prior = None if prior is None else self._checked(prior)
        self.reset()

    def _checked(self, prior: np.ndarray) -> torch.Tensor:
        prior = torch.as_tensor(np.asarray(prior, dtype=bool))
        if prior.ndim != 3 or prior.shape[0] != len(self.names):
            raise ValueError(f"prior must be bool [{len(self.names)}, S, S], got {tuple(prior.shape)}.")
        return prior

    def reset(self) -> None:
        """Forget every image seen so far."""
        k = len(self.names)
        self.counts = {name: np.zeros((3, k), dtype=np.int64) for name in BASELINES}  # intersection, predicted, truth
        self.dice_sum = {name: np.zeros(k) for name in BASELINES}
        self.num_images = 0
        self.without_prior = 0  # images scored without a prior mask

    def update(self, target: torch.Tensor, prior: np.ndarray | None = None) -> None:
        """Add a batch of target planes uint8 [B, K, S, S] (0/1, IGNORE_INDEX excluded), or [B, S, S] for one
        class; ``prior``: this batch's prior mask, instead of the one given at construction."""
        prior = self._checked(prior) if prior is not None else self.prior
        target = torch.as_tensor(target).cpu()
        target = target.unsqueeze(1) if target.ndim == 3 else target
        valid, truth = target != IGNORE_INDEX, target == 1
        truth_area = truth.sum((2, 3)).numpy()
        zeros = np.zeros_like(truth_area)
        self._add("empty_mask", zeros, zeros, truth_area)
        if prior is not None:
            if tuple(prior.shape[1:]) != tuple(target.shape[2:]):
                raise ValueError(f"prior is {tuple(prior.shape[1:])}, targets {tuple(target.shape[2:])}.")
            predicted = prior.unsqueeze(0) & valid
            self._add("prior_mask", (predicted & truth).sum((2, 3)).numpy(), predicted.sum((2, 3)).numpy(), truth_area)
        else:
            self.without_prior += target.shape[0]
        self.num_images += target.shape[0]

    def _add(self, name: str, intersection: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> None:
        self.counts[name] += np.stack([intersection.sum(0), predicted.sum(0), truth.sum(0)])
        self.dice_sum[name] += dice_from_counts(intersection, predicted, truth).sum(0)

    def compute(self) -> dict[str, float]:
        """The keys of the module docstring (the prior mask's only if every image had one); empty before any
        image."""
        if self.num_images == 0:
            return {}
        results: dict[str, float] = {}
        for name in BASELINES if self.without_prior == 0 else BASELINES[:1]:
            values = {
                "dice": dice_from_counts(*self.counts[name]),
                "kaggle_dice": self.dice_sum[name] / self.num_images,
            }
            for key in BASELINE_KEYS:
                results[f"{name}_{key}"] = float(values[key].mean())
            if len(self.names) > 1:
                for k, class_name in enumerate(self.names):
                    for key in BASELINE_KEYS:
                        results[f"{name}_{key}/{class_name}"] = float(values[key][k])
        return results
