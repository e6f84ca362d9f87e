"""The balanced training sampler: negative undersampling and positive oversampling, fresh every epoch.

Accelerate shards a sampler by having every process iterate the *same* index sequence and keep its slice, so the
sequence must be a pure function of ``(seed, epoch)``: a ``torch.Generator`` seeded with both, never global RNG.
The Trainer calls :meth:`BalancedSampler.set_epoch` at the start of each epoch (through Accelerate's data loader).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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
