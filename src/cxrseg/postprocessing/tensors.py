"""Probability maps and targets as checked tensors: the input rules the mask rule and the metrics share.

Probabilities are float in [0, 1] (``>=`` thresholds are compared in float32); targets hold 0, 1 or
:data:`cxrseg.labels.IGNORE_INDEX`.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrseg.labels import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def check_probs(probs: torch.Tensor, name: str = "probs") -> torch.Tensor:
    """``probs`` as float32 (copied only from another dtype); raises unless all lie in [0, 1] (NaN fails too)."""
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be floating point probabilities in [0, 1], got dtype {probs.dtype}.")
    probs = probs.float()
    if probs.numel():
        low, high = torch.aminmax(probs)
        if not (low >= 0 and high <= 1):
            raise ValueError(
                f"{name} must lie in [0, 1] (apply sigmoid/softmax first); got range "
                f"[{low.item():.4g}, {high.item():.4g}]."
            )
    return probs


def split_target(target: torch.Tensor, name: str = "target") -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, valid) bool masks of a 0/1/IGNORE_INDEX target; raises on any other value."""
    positive = target == 1
    valid = target != IGNORE_INDEX
    if not bool((positive | (target == 0) | ~valid).all()):
        values = torch.unique(target)[:10].tolist()
        raise ValueError(f"{name} values must be 0, 1 or {IGNORE_INDEX} (ignored); found {values}.")
    return positive, valid
