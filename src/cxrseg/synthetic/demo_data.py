"""The synthetic demo datasets in the PNG layout (``cxrseg make-demo-data``, ``generate_demo_data: true``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrseg.files import atomic_folder
from cxrseg.images import write_png
from cxrseg.labels import TASKS, pack_multilabel
from cxrseg.synthetic.radiographs import synthetic_multilabel_radiograph, synthetic_radiograph


def _write_demo_layout(out: str | os.PathLike, num_images: int, draw, task: str, desc: str, split: str) -> Path:
    """Write ``num_images`` pairs ``draw(i) -> (image uint8 [S, S], mask)`` (mask: uint8 or uint16 [S, S]) to
    split ``split`` and the labels.json of ``task`` to ``out`` atomically (:func:`cxrseg.files.atomic_folder`).
    ``out`` must not exist (FileExistsError)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out.")
    with atomic_folder(out) as building:
        for sub in ("images", "masks"):
            (building / sub / split).mkdir(parents=True)
        for i in tqdm(range(num_images), desc=desc, unit="img"):
            image, mask = draw(i)
            image_id = f"demo_{i:05d}"
            write_png(building / "images" / split / f"{image_id}.png", image)
            write_png(building / "masks" / split / f"{image_id}.png", mask)
        TASKS[task].save(building)
    return out


def make_demo_data(
    out: str | os.PathLike, num_images: int = 400, size: int = 256, seed: int = 0, split: str = "train"
) -> Path:
    """Write ``num_images`` synthetic pairs to ``OUT/images/<split>`` and ``OUT/masks/<split>`` (plus labels.json).

    Written into a temporary folder beside ``out`` and renamed at the end, so ``out`` is complete or absent.
    ``out`` must not exist yet. Returns ``out``.
    """
    return _write_demo_layout(
        out,
        num_images,
        lambda i: synthetic_radiograph(seed * 1_000_003 + i, size),
        "pneumothorax",
        "Drawing demo radiographs",
        split,
    )


def make_multilabel_demo_data(
    out: str | os.PathLike, num_images: int = 400, size: int = 256, seed: int = 0, split: str = "train"
) -> Path:
    """The ChestX-Det-like multi-label demo (:func:`synthetic_multilabel_radiograph`) in the PNG layout: 16-bit
    bit-field masks (:func:`cxrseg.labels.pack_multilabel`) and labels.json ``{"task": "chestxdet"}``.

    Complete or absent, like :func:`make_demo_data`; ``out`` must not exist yet. Returns ``out``.
    """

    def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, planes = synthetic_multilabel_radiograph(seed * 1_000_003 + i, size)
        return image, pack_multilabel(planes)

    return _write_demo_layout(out, num_images, draw, "chestxdet", "Drawing multi-label demo radiographs", split)


DEMO_DATA_MAKERS = {"pneumothorax": make_demo_data, "chestxdet": make_multilabel_demo_data}
"""The demo generator of each task (the recipe key ``task``): ``maker(out, num_images, size, seed, split) -> out``."""
