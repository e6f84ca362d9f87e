"""The synthetic demo datasets in the PNG layout (``cxrseg make-demo-data``, ``generate_demo_data: true``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrseg.errors import OutputError, UsageError
from cxrseg.files import DATASET, atomic_folder
from cxrseg.imageio.images import write_png
from cxrseg.labels import CHESTXDET, PNEUMOTHORAX, LabelSet, pack_multilabel
from cxrseg.synthetic.radiographs import (
    ANATOMY_DEMO_CLASSES,
    synthetic_anatomy_radiograph,
    synthetic_multilabel_radiograph,
    synthetic_radiograph,
)


def _write_demo_layout(out: str | os.PathLike, num_images: int, draw, labels: LabelSet, desc: str, split: str) -> Path:
    """Write ``num_images`` pairs ``draw(i) -> (image uint8 [S, S], mask)`` (mask: uint8 or uint16 [S, S]) to
    split ``split`` and the labels.json of ``labels`` to ``out`` atomically (:func:`cxrseg.files.atomic_folder`).
    ``out`` must not exist (:class:`~cxrseg.errors.OutputError`)."""
    out = Path(out)
    if out.exists():
        raise OutputError(f"{out} already exists; remove it or choose another --out.")
    if num_images < 1:
        raise UsageError(f"The number of demo images must be at least 1, got {num_images}.")
    with atomic_folder(out, DATASET) as building:
        for sub in ("images", "masks"):
            (building / sub / split).mkdir(parents=True)
        for i in tqdm(range(num_images), desc=desc, unit="img"):
            image, mask = draw(i)
            image_id = f"demo_{i:05d}"
            write_png(building / "images" / split / f"{image_id}.png", image)
            write_png(building / "masks" / split / f"{image_id}.png", mask)
        labels.save(building)
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
        PNEUMOTHORAX,
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

    return _write_demo_layout(out, num_images, draw, CHESTXDET, "Drawing multi-label demo radiographs", split)


ANATOMY_DEMO_LABELS = LabelSet("anatomy", ANATOMY_DEMO_CLASSES, multilabel=False)
"""The anatomy demo's label set, a user's own as far as cxrseg knows: ``labels.json`` ``{"task": "anatomy",
"names": ["background", "lung", "heart"], "multilabel": false}``."""


def make_anatomy_demo_data(
    out: str | os.PathLike, num_images: int = 300, size: int = 256, seed: int = 0, split: str = "train"
) -> Path:
    """The anatomy demo (:func:`synthetic_anatomy_radiograph`: lung fields and heart, 3-class single-label masks
    of class indices) in the PNG layout, with :data:`ANATOMY_DEMO_LABELS` as its labels.json.

    Complete or absent, like :func:`make_demo_data`; ``out`` must not exist yet. Returns ``out``.
    """

    def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_anatomy_radiograph(seed * 1_000_003 + i, size)

    return _write_demo_layout(out, num_images, draw, ANATOMY_DEMO_LABELS, "Drawing anatomy demo radiographs", split)


EXAMPLE_PIXEL_SPACING_MM = 0.8
"""Pixel spacing (mm) of the synthetic example DICOM: at 512 px a 41 cm film, as a real chest radiograph."""


def write_example_radiographs(folder: str | os.PathLike, multilabel: bool = False, size: int = 512) -> list[Path]:
    """Inputs for trying a model (the web app's examples): a synthetic radiograph with a finding as
    ``synthetic.png``, and another as ``synthetic_spacing_0.8mm.dcm`` with ``PixelSpacing`` =
    :data:`EXAMPLE_PIXEL_SPACING_MM`, so that areas are shown in cm². multilabel: ChestX-Det-like images with at
    least two findings each, else pneumothorax. Returns the two paths."""
    from cxrseg.imageio.dicom import write_dicom  # pydicom is imported only here

    def draw(seed: int) -> np.ndarray:
        if not multilabel:
            return synthetic_radiograph(seed, size, positive=True)[0]
        while True:
            image, planes = synthetic_multilabel_radiograph(seed, size)
            if planes.any((1, 2)).sum() >= 2:
                return image
            seed += 1000

    folder = Path(folder)
    spacing = EXAMPLE_PIXEL_SPACING_MM
    png = write_png(folder / "synthetic.png", draw(1))
    dicom = write_dicom(folder / f"synthetic_spacing_{spacing}mm.dcm", draw(2), PixelSpacing=[spacing, spacing])
    return [png, dicom]


DEMO_DATA_MAKERS = {
    "pneumothorax": make_demo_data,
    "chestxdet": make_multilabel_demo_data,
    "anatomy": make_anatomy_demo_data,
}
"""The demo generator of each task (the recipe key ``task``): ``maker(out, num_images, size, seed, split) -> out``."""
