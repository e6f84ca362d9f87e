"""Albumentations pipelines and the one conversion from (image, mask) to model inputs.

Image and mask go through one albumentations call (masks use nearest-neighbour), then :class:`ToModelInputs`
expands grayscale to the model's 3 channels and normalises with the image processor's mean and std — the only
place this happens. albumentations 2.x argument names only (``fill``, ``fill_mask``, ``Affine``).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from cxrseg.config import AUGMENTATIONS


def build_transforms(augmentation: str, image_size: int, seed: int | None = None) -> A.Compose:
    """The pipeline for ``augmentation`` ("none" = resize only, used for evaluation; "standard"; "aggressive").

    Works on uint8 gray images [H, W] and masks [H, W] or [H, W, C]; output is ``image_size`` square.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augmentation!r}; choose one of {AUGMENTATIONS}.")
    steps: list[A.BasicTransform] = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if augmentation in ("standard", "aggressive"):
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.06, 0.06),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.OneOf([A.GaussNoise(std_range=(0.01, 0.05)), A.GaussianBlur(blur_limit=(3, 5))], p=0.3),
        ]
    if augmentation == "aggressive":
        steps += [
            A.OneOf(
                [
                    A.ElasticTransform(alpha=30, sigma=6, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                    A.GridDistortion(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                    A.OpticalDistortion(distort_limit=0.1, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                ],
                p=0.3,
            ),
            A.CLAHE(clip_limit=2.0, p=0.3),
            A.CoarseDropout(
                num_holes_range=(1, 6), hole_height_range=(0.03, 0.1), hole_width_range=(0.03, 0.1), fill=0, p=0.3
            ),
        ]
    return A.Compose(steps, seed=seed)


class ToModelInputs:
    """uint8 gray [H, W] → ``pixel_values`` float32 [3, H, W], normalised as ``(x / 255 - mean) / std`` per channel.

    Masks: single-label class indices [H, W] → ``labels`` int64 [H, W]; multi-label planes [H, W, C] → float32
    [C, H, W]. ``mean``/``std`` come from the model's image processor (ImageNet statistics for Swin).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def image(self, image: np.ndarray) -> torch.Tensor:
        gray = torch.from_numpy(np.array(image, dtype=np.float32, copy=True)).div_(255.0)
        return (gray.unsqueeze(0).expand(3, -1, -1) - self.mean) / self.std

    @staticmethod
    def labels(mask: np.ndarray) -> torch.Tensor:
        if mask.ndim == 3:
            return torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1))).to(torch.float32)
        return torch.from_numpy(np.ascontiguousarray(mask)).to(torch.int64)
