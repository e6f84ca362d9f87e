"""The one protocol of everything that adds up over streamed batches (MONAI's metrics: per batch, aggregate, reset).

Implemented by :class:`~cxrseg.evaluation.metrics.SegmentationMetrics` (pixel and per-image metrics at a threshold),
:class:`~cxrseg.evaluation.rule_search.TripletSearch` (the mask rule's grid) and
:class:`~cxrseg.evaluation.engine.RuleScores` (the scores of the mask rule in effect). Memory stays constant in the
number of images: an accumulator keeps counts, never a batch.
"""

from __future__ import annotations

from typing import Any, Protocol


class Accumulator(Protocol):
    """update: add one batch (what a batch is, is the implementation's: probabilities and targets, or per-image
    results); compute: the result over every batch since the last reset, without changing the counts; reset:
    forget every batch."""

    def update(self, *args: Any, **kwargs: Any) -> None: ...

    def compute(self) -> Any: ...

    def reset(self) -> None: ...
