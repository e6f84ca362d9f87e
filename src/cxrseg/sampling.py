"""Training samplers, fresh every epoch: :class:`BalancedSampler` (single-label: negative undersampling and positive
oversampling) and :class:`ClassBalancedSampler` (multi-label: images with rare classes drawn more often).

Accelerate shards a sampler by having every process iterate the *same* index sequence and keep its slice, so the
sequence must be a pure function of ``(seed, epoch)``: a ``torch.Generator`` seeded with both, never global RNG.
The Trainer calls ``set_epoch`` at the start of each epoch (through Accelerate's data loader).
:func:`build_sampler` picks the recipe's sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Sampler

from cxrseg.config import SamplingArguments
from cxrseg.labels import LabelSet

if TYPE_CHECKING:  # annotations only: the samplers need no `datasets`
    from cxrseg.data.dataset import TrainingData


class BalancedSampler(Sampler[int]):
    """Each epoch: every positive plus a fresh random ``negative_keep_ratio`` of the negatives form the pool; the
    epoch is ``len(pool)`` draws with replacement from it, a positive ``positive_weight`` times as likely as a
    negative.

    is_positive: one flag per dataset row. The epoch length is fixed: ``num_positive + round(ratio · num_negative)``.
    """

    def __init__(
        self, is_positive: Sequence[bool], negative_keep_ratio: float = 1.0, positive_weight: float = 1.0, seed: int = 0
    ) -> None:
        if not 0.0 <= negative_keep_ratio <= 1.0:
            raise ValueError(f"negative_keep_ratio must be in [0, 1], got {negative_keep_ratio}.")
        if positive_weight <= 0:
            raise ValueError(f"positive_weight must be positive, got {positive_weight}.")
        flags = torch.as_tensor(list(is_positive), dtype=torch.bool)
        self.positives = torch.nonzero(flags).flatten()
        self.negatives = torch.nonzero(~flags).flatten()
        self.num_kept_negatives = round(negative_keep_ratio * len(self.negatives))
        if len(self.positives) + self.num_kept_negatives == 0:
            raise ValueError("The balanced sampler has nothing to draw: no positives and no negatives kept.")
        self.positive_weight = positive_weight
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.positives) + self.num_kept_negatives

    def indices(self, epoch: int) -> list[int]:
        """The dataset rows drawn in ``epoch``, in order (what every process iterates before sharding)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        kept = self.negatives[torch.randperm(len(self.negatives), generator=generator)[: self.num_kept_negatives]]
        pool = torch.cat([self.positives, kept])
        weights = torch.cat([torch.full((len(self.positives),), self.positive_weight), torch.ones(len(kept))])
        draws = torch.multinomial(weights, len(pool), replacement=True, generator=generator)
        return pool[draws].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch))


class ClassBalancedSampler(Sampler[int]):
    """Multi-label image-level class balance: an image is drawn in proportion to the weight of the rarest class it
    contains, so images holding rare findings (ChestX-Det: Mass, Pneumothorax) come up more often.

    class_presence: one row per dataset row, one flag per class (True where the image has that class).
    With ``n_c`` the number of images holding class ``c`` and ``n_max`` the largest ``n_c``, the class weight is
    ``w_c = (n_max / n_c) ** class_balance_power`` (1 for the most frequent class; power 0 = uniform, power 1 makes
    the classes equally frequent when every image holds one class), an image's weight is the largest ``w_c`` of its
    classes, and an image with no class weighs ``empty_image_weight``. With power 0.5 this is LVIS's repeat-factor
    sampling (Gupta et al., 2019) at threshold ``n_max``, used as draw probabilities.

    Each epoch is ``len(class_presence)`` draws with replacement, a function of ``(seed, epoch)`` only.
    """

    def __init__(
        self,
        class_presence: Sequence[Sequence[bool]],
        class_balance_power: float = 0.5,
        empty_image_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        if class_balance_power < 0:
            raise ValueError(f"class_balance_power must be >= 0, got {class_balance_power}.")
        if empty_image_weight < 0:
            raise ValueError(f"empty_image_weight must be >= 0, got {empty_image_weight}.")
        presence = torch.as_tensor([list(row) for row in class_presence], dtype=torch.bool)
        if presence.ndim != 2 or presence.shape[0] == 0 or presence.shape[1] == 0:
            raise ValueError(
                f"class_presence must be a non-empty [images, classes] table, got {tuple(presence.shape)}."
            )
        self.image_counts = presence.sum(0)  # int64 [C]: images holding each class
        present = self.image_counts > 0
        self.class_weights = torch.zeros(presence.shape[1], dtype=torch.float64)  # absent classes weigh nothing
        if present.any():
            ratio = self.image_counts.max() / self.image_counts[present].double()
            self.class_weights[present] = ratio**class_balance_power
        empty = ~presence.any(1)
        self.weights = torch.where(
            empty,
            torch.tensor(float(empty_image_weight), dtype=torch.float64),
            (presence.double() * self.class_weights).amax(1),
        )
        if not self.weights.sum() > 0:
            raise ValueError("The class-balanced sampler has nothing to draw: no findings and empty_image_weight 0.")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def indices(self, epoch: int) -> list[int]:
        """The dataset rows drawn in ``epoch``, in order (what every process iterates before sharding)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch))


def build_sampler(
    sampling_args: SamplingArguments, labels: LabelSet, data: TrainingData, seed: int
) -> BalancedSampler | ClassBalancedSampler | None:
    """The recipe's training sampler over ``data.train``'s rows: None (the Trainer's random sampler) unless
    ``balanced_sampling``; then :class:`ClassBalancedSampler` for multi-label tasks, else :class:`BalancedSampler`."""
    if not sampling_args.balanced_sampling:
        return None
    if labels.multilabel:
        return ClassBalancedSampler(
            data.train_class_presence,
            sampling_args.class_balance_power,
            sampling_args.empty_image_weight,
            seed=seed,
        )
    return BalancedSampler(
        data.train_is_positive, sampling_args.negative_keep_ratio, sampling_args.positive_weight, seed=seed
    )
