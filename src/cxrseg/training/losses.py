"""Dice + cross-entropy losses for single-label (softmax) and multi-label (sigmoid) segmentation.

Both are :class:`DiceEntropyLoss` (``lambda_ce``, ``lambda_dice``, Dice ``smooth`` and ``batch_dice``, per-class
``class_weights``) and share :func:`soft_dice_loss`; they differ only in how logits become probabilities and which
entropy term is added. Definitions follow MONAI's ``DiceLoss`` (tests compare against it to 1e-5):

    dice_c = 1 - (2 Σ p·g + smooth) / (Σ p + Σ g + smooth)

summed over the pixels of one image (or of the whole batch when ``batch_dice``), then averaged over images and
the reported classes. Pixels whose label is :data:`~cxrseg.labels.IGNORE_INDEX` count in neither term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrseg.config import LossArguments
from cxrseg.errors import DataError, RecipeError
from cxrseg.labels import IGNORE_INDEX, LabelSet


def soft_dice_loss(
    probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor, smooth: float, batch_dice: bool
) -> torch.Tensor:
    """Mean soft Dice loss.

    probs, onehot: float [B, C, H, W]; valid: float [B, 1, H, W] (1 where the pixel counts, 0 where ignored).
    Returns a scalar: the mean over classes (and images unless ``batch_dice``) of ``1 - dice``.
    """
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3) if batch_dice else (2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


class DiceEntropyLoss(nn.Module):
    """``lambda_ce`` × an entropy term + ``lambda_dice`` × soft Dice: the base of both task losses.

    Called as ``loss(logits [B, C, H, W], labels) -> scalar``. ``class_weights`` (length C, or None for unweighted)
    weight the entropy term per class; each subclass says how. ``smooth`` and ``batch_dice`` are
    :func:`soft_dice_loss`'s.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        smooth: float = 1e-5,
        batch_dice: bool = False,
    ) -> None:
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.lambda_ce, self.lambda_dice, self.smooth, self.batch_dice = lambda_ce, lambda_dice, smooth, batch_dice

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        entropy, dice = self.entropy_and_dice(logits.float(), labels)
        return self.lambda_ce * entropy + self.lambda_dice * dice

    def entropy_and_dice(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two unweighted terms (scalars) for float32 ``logits``."""
        raise NotImplementedError


class DiceCELoss(DiceEntropyLoss):
    """Single-label: weighted cross-entropy + soft Dice of the softmax over foreground classes.

    labels: int64 [B, H, W] class indices. ``class_weights`` weight the cross-entropy exactly as
    ``torch.nn.functional.cross_entropy(weight=...)`` does (a weighted mean).
    """

    def entropy_and_dice(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        ce = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)
        valid = (labels != IGNORE_INDEX).unsqueeze(1)
        safe_labels = labels.masked_fill(~valid.squeeze(1), 0)
        onehot = F.one_hot(safe_labels, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        probs = logits.softmax(dim=1)
        dice = soft_dice_loss(probs[:, 1:], onehot[:, 1:], valid.to(logits.dtype), self.smooth, self.batch_dice)
        return ce, dice


class DiceBCELoss(DiceEntropyLoss):
    """Multi-label: per-class binary cross-entropy + soft Dice of the sigmoids.

    labels: float [B, C, H, W], 0/1 or IGNORE_INDEX. ``class_weights`` are the BCE's positive weights:
    ``binary_cross_entropy_with_logits(pos_weight=...)``'s per-class weight of positive pixels (negatives weigh 1).
    The BCE is the mean over valid pixels and classes.
    """

    def entropy_and_dice(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (labels != IGNORE_INDEX).to(logits.dtype)
        target = labels.to(logits.dtype) * valid
        pos_weight = None if self.class_weights is None else self.class_weights.to(logits.device)[:, None, None]
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        bce = (bce * valid).sum() / valid.sum().clamp_min(1.0)
        # Dice's valid mask is per class here; soft_dice_loss broadcasts a [B, C, H, W] mask as well.
        dice = soft_dice_loss(logits.sigmoid(), target, valid, self.smooth, self.batch_dice)
        return bce, dice


def class_weights_from_counts(pixel_counts: Sequence[int]) -> list[float]:
    """Inverse-frequency class weights ``w_c = N / (C · n_c)`` from per-class pixel counts ``n_c`` (N = Σ n_c).

    A class with no pixels would get an infinite weight, so it is an error: say which class is absent.
    """
    counts = [int(n) for n in pixel_counts]
    if any(n <= 0 for n in counts):
        missing = [i for i, n in enumerate(counts) if n <= 0]
        raise DataError(f"Cannot weight classes {missing}: they have no pixels in the training masks.")
    total = sum(counts)
    return [total / (len(counts) * n) for n in counts]


def positive_weights_from_counts(positive_counts: Sequence[int], num_pixels: int, cap: float) -> list[float]:
    """Multi-label BCE positive weights ``min(negatives_c / positives_c, cap)``; a class with no pixels gets ``cap``."""
    return [min((num_pixels - n) / n, cap) if n > 0 else cap for n in positive_counts]


def build_loss(
    loss_args: LossArguments, labels: LabelSet, pixel_counts: Sequence[int], num_pixels: int
) -> DiceEntropyLoss:
    """The recipe's loss for the task: :class:`DiceBCELoss` for multi-label, else :class:`DiceCELoss`.

    ``loss_args.class_weights``: None, explicit weights, or "auto" — from ``pixel_counts`` (per class, over the
    training masks) and ``num_pixels`` (all their pixels): inverse frequency, or for multi-label the BCE positive
    weights capped at ``loss_args.max_pos_weight``.
    """
    class_weights = loss_args.class_weights
    if class_weights == "auto":
        class_weights = (
            positive_weights_from_counts(pixel_counts, num_pixels, loss_args.max_pos_weight)
            if labels.multilabel
            else class_weights_from_counts(pixel_counts)
        )
    if class_weights is not None and len(class_weights) != len(pixel_counts):
        raise RecipeError(
            f"class_weights has {len(class_weights)} values but the task has {len(pixel_counts)} classes."
        )
    loss_class = DiceBCELoss if labels.multilabel else DiceCELoss
    return loss_class(
        class_weights,
        lambda_ce=loss_args.lambda_ce,
        lambda_dice=loss_args.lambda_dice,
        smooth=loss_args.dice_smooth,
        batch_dice=loss_args.batch_dice,
    )
