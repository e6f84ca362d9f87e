"""The one labels contract: class names, id2label, mask encoding and the ignore index.

Two tasks share it:

* ``pneumothorax`` (SIIM-ACR) is single-label: the model has one softmax output per class, background explicit at
  index 0, and masks are class-index maps ``int64 [H, W]`` with values in ``{0, 1}`` or :data:`IGNORE_INDEX`.
* ``chestxdet`` is multi-label: one sigmoid output per finding, no background channel (background is "no finding
  on"), and masks are binary planes ``float [C, H, W]``; on disk a multi-label mask is one 16-bit PNG whose bit
  ``c`` is set where class ``c`` is present (:func:`pack_multilabel` / :func:`unpack_multilabel`), so no overlap
  is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255
"""Label value excluded from every loss and metric (mask padding uses it as ``fill_mask``)."""

CHESTXDET_CLASSES = (
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "Diffuse Nodule",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pleural Thickening",
    "Pneumothorax",
)
"""The 13 ChestX-Det findings in the dataset's official order."""


@dataclass(frozen=True)
class LabelSet:
    """Names of a model's outputs, in output order.

    names: one per output channel. Single-label sets start with ``"background"``.
    multilabel: True for one sigmoid per class (no background channel), False for one softmax over ``names``.
    """

    task: str
    names: tuple[str, ...]
    multilabel: bool

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def foreground(self) -> tuple[str, ...]:
        """The classes that metrics report: all but background."""
        return self.names if self.multilabel else self.names[1:]


PNEUMOTHORAX = LabelSet("pneumothorax", ("background", "pneumothorax"), multilabel=False)
CHESTXDET = LabelSet("chestxdet", CHESTXDET_CLASSES, multilabel=True)
TASKS = {labels.task: labels for labels in (PNEUMOTHORAX, CHESTXDET)}


def get_labels(task: str) -> LabelSet:
    """The label set of ``task`` (``pneumothorax`` or ``chestxdet``)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task]


def labels_from_config(id2label: dict) -> LabelSet:
    """Rebuild the label set of a saved model from its ``config.id2label`` (keys may be strings)."""
    names = tuple(id2label[k] for k in sorted(id2label, key=int))
    for labels in TASKS.values():
        if labels.names == names:
            return labels
    multilabel = names[0] != "background"
    return LabelSet("custom", names, multilabel=multilabel)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A stored single-label mask (0/1 or 0/255, uint8 [H, W]) as class indices: any non-zero is class 1."""
    return (mask != 0).astype(np.uint8)


def pack_multilabel(planes: np.ndarray) -> np.ndarray:
    """Binary planes ``[C, H, W]`` (C <= 16) as one uint16 ``[H, W]`` bit field: bit ``c`` set where class ``c``."""
    if planes.shape[0] > 16:
        raise ValueError(f"At most 16 classes fit a 16-bit mask, got {planes.shape[0]}.")
    bits = (np.asarray(planes) != 0).astype(np.uint16)
    weights = (np.uint16(1) << np.arange(bits.shape[0], dtype=np.uint16))[:, None, None]
    return (bits * weights).sum(axis=0, dtype=np.uint16)


def unpack_multilabel(packed: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse of :func:`pack_multilabel`: uint16 ``[H, W]`` → uint8 ``[H, W, C]`` 0/1 planes (channels last for
    albumentations)."""
    packed = np.asarray(packed).astype(np.uint16)
    shifts = np.arange(num_classes, dtype=np.uint16)
    return ((packed[..., None] >> shifts) & 1).astype(np.uint8)
