"""Training samplers, fresh every epoch: :class:`ShuffledSampler` (every row once, in a new order),
:class:`BalancedSampler` (single-label: negative undersampling and positive oversampling) and
:class:`ClassBalancedSampler` (multi-label: images with rare classes drawn more often).

Accelerate shards a sampler by having every process iterate the *same* sequence and keep its slice, so the sequence
must be a pure function of ``(seed, epoch)``: a ``torch.Generator`` seeded with both, never global RNG. The samplers
yield :class:`SampleKey` items, not bare rows: a key also names the draw's place in the epoch, from which the dataset
seeds that sample's augmentation, so prefetching, data-loader workers, sharding and resumption cannot change what a
step sees. The Trainer calls ``set_epoch`` at the start of each epoch. :func:`cxrseg.data.dataset.build_sampler`
picks the
recipe's sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """One draw of a training sampler: dataset ``row``, drawn at ``position`` (0-based, before sharding) of ``epoch``
    by a sampler seeded with ``seed``."""

    row: int
    seed: int
    epoch: int
    position: int

    def augmentation_seed(self) -> int:
        """The seed of this draw's random augmentation: a function of ``(seed, epoch, position)`` only (numpy's
        ``SeedSequence`` hashes the three into well-mixed bits), so a row drawn twice is augmented twice."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.position]).generate_state(1, np.uint64)[0])


class EpochSampler(Sampler[SampleKey]):
    """Base of the samplers: :meth:`indices` gives an epoch's rows from ``(seed, epoch)``; iterating yields them as
    :class:`SampleKey` items of the current epoch (``set_epoch``)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def indices(self, epoch: int) -> list[int]:
        """The dataset rows drawn in ``epoch``, in order (what every process iterates before sharding)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[SampleKey]:
        for position, row in enumerate(self.indices(self.epoch)):
            yield SampleKey(row, self.seed, self.epoch, position)


class ShuffledSampler(EpochSampler):
    """Each epoch: every one of ``num_rows`` rows once, in a fresh random order (the unbalanced recipes)."""

    def __init__(self, num_rows: int, seed: int = 0) -> None:
        super().__init__(seed)
        self.num_rows = num_rows

    def __len__(self) -> int:
        return self.num_rows

    def indices(self, epoch: int) -> list[int]:
        return torch.randperm(self.num_rows, generator=self.generator(epoch)).tolist()


class BalancedSampler(EpochSampler):
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
        super().__init__(seed)
        flags = torch.as_tensor(list(is_positive), dtype=torch.bool)
        self.positives = torch.nonzero(flags).flatten()
        self.negatives = torch.nonzero(~flags).flatten()
        self.num_kept_negatives = round(negative_keep_ratio * len(self.negatives))
        if len(self.positives) + self.num_kept_negatives == 0:
            raise ValueError("The balanced sampler has nothing to draw: no positives and no negatives kept.")
        self.positive_weight = positive_weight

    def __len__(self) -> int:
        return len(self.positives) + self.num_kept_negatives

    def indices(self, epoch: int) -> list[int]:
        generator = self.generator(epoch)
        kept = self.negatives[torch.randperm(len(self.negatives), generator=generator)[: self.num_kept_negatives]]
        pool = torch.cat([self.positives, kept])
        weights = torch.cat([torch.full((len(self.positives),), self.positive_weight), torch.ones(len(kept))])
        draws = torch.multinomial(weights, len(pool), replacement=True, generator=generator)
        return pool[draws].tolist()


class ClassBalancedSampler(EpochSampler):
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
        super().__init__(seed)
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

    def __len__(self) -> int:
        return len(self.weights)

    def indices(self, epoch: int) -> list[int]:
        generator = self.generator(epoch)
        return torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()
