"""The Predictor protocol: what evaluation, prediction, pictures and the web app use of a model.

One model (:class:`cxrseg.inference.segmenter.Segmenter`) and several averaged
(:class:`cxrseg.inference.ensemble.Ensemble`) both are one; :func:`cxrseg.inference.ensemble.load_models` gives
either from what a ``--model`` option names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.labels import LabelSet
from cxrseg.postprocessing.rules import MaskRule


class Predictor(Protocol):
    """A model ready for inference: images → probabilities of its K foreground outputs → masks.

    source: what the user named (folder, Hub id, CV folder, or members joined by ``+``). model_dir: the folder the
    model was read from (a CV folder for its ensemble; None for an ensemble of separate models); is_local: whether
    ``source`` named a local folder. splits: the model's ``splits.json`` (None when no split is held out from it).
    postprocess: the mask rule read from a file, None for ``prob >= 0.5``; rule: the rule in effect.
    image_size: side in pixels of the square working size (where evaluation runs and ``min_area`` is counted).
    """

    @property
    def source(self) -> str: ...

    @property
    def labels(self) -> LabelSet: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def preprocessor(self) -> Preprocessor: ...

    @property
    def image_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def model_dir(self) -> Path | None: ...

    @property
    def is_local(self) -> bool: ...

    @property
    def splits(self) -> dict[str, list[str]] | None: ...

    @property
    def postprocess(self) -> MaskRule | None: ...

    @property
    def rule(self) -> MaskRule: ...

    def probabilities(self, pixel_values: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """pixel_values float32 [B, 3, S, S] (:attr:`preprocessor`'s) → probabilities float32 [B, K, S, S] in
        [0, 1], on the CPU."""
        ...

    def resize_probabilities(self, probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """probs float32 [K, h, w] (or [B, K, h, w]) → the same at ``size`` (height, width), bilinear."""
        ...

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray:
        """Binary masks uint8 0/1 [K, H, W] of one image's probabilities float32 [K, S, S] under :attr:`rule`
        (at ``probs_at_size``'s size when given)."""
        ...
