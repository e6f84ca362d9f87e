"""The input pipeline of inference: uint8 gray ``[H, W]`` → ``pixel_values`` at a model's working size, exactly as
training's evaluation prepares them (:func:`cxrseg.data.transforms.build_transforms` ``"none"``, then
:class:`~cxrseg.data.transforms.ToModelInputs`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from cxrseg.data.transforms import ToModelInputs, build_transforms


@functools.lru_cache(maxsize=8)
def _resize_pipeline(size: int):
    """The deterministic resize to ``size`` pixels (:func:`build_transforms` ``"none"``), built once per size: building
    it costs more than applying it (``BENCHMARKS.md``)."""
    return build_transforms("none", size)


@dataclass(frozen=True)
class Preprocessor:
    """uint8 gray ``[H, W]`` → model inputs at the working size, exactly as training's evaluation prepares them.

    Small and picklable, so DataLoader workers can run it. size: (height, width) working size in pixels.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def resize(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(image uint8 [h, w], mask [h, w] or [h, w, C] or None) at the working size (mask: nearest neighbour)."""
        if self.size[0] != self.size[1]:
            raise ValueError(f"Non-square working size {self.size} is not supported.")
        pipeline = _resize_pipeline(self.size[0])
        if mask is None:
            return pipeline(image=image)["image"], None
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"]

    def to_pixel_values(self, resized: np.ndarray) -> torch.Tensor:
        """uint8 gray at the working size → float32 [3, h, w] (:class:`ToModelInputs`)."""
        return ToModelInputs(self.mean, self.std).image(resized)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """uint8 gray [H, W] (any size) → ``pixel_values`` float32 [3, h, w] at the working size."""
        return self.to_pixel_values(self.resize(image)[0])
