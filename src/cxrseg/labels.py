"""The one labels contract: class names, id2label, mask encoding and the ignore index.

A dataset's ``labels.json`` names its label set (:meth:`LabelSet.load`); the built-in sets are ``pneumothorax``
and ``chestxdet``, and any other is the user's own (``{"task": "lungs", "names": ["background", "lung",
"heart"]}``). Two kinds:

* **single-label** (``pneumothorax``, or any ``names`` list starting with ``"background"``): one softmax output per
  class, background explicit at index 0; masks are class-index maps ``int64 [H, W]`` with values ``0..K-1`` or
  :data:`IGNORE_INDEX` (on disk: a two-class mask is 0/1 or 0/255, a K-class mask holds the indices).
* **multi-label** (``chestxdet``, or ``"multilabel": true``): one sigmoid output per class, no background channel
  (background is "no class on"), so classes may overlap (clavicles over lungs); masks are binary planes
  ``float [C, H, W]``; on disk one 16-bit PNG whose bit ``c`` is set where class ``c`` is present
  (:func:`pack_multilabel` / :func:`unpack_multilabel`), so no overlap is lost.

A saved model keeps its label set in ``config.json``: ``id2label`` (the names), ``problem_type``
(``multi_label_classification`` or ``single_label_classification``) and ``cxrseg_task`` (the task's name):
:func:`label_config` writes them and :func:`labels_from_config` reads them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrseg.constants import LABELS_FILENAME
from cxrseg.errors import DataError
from cxrseg.files import atomic_write_text

"""The file naming a folder's classes (PNG layout, ``cxrseg predict`` output): :meth:`LabelSet.save` /
:meth:`LabelSet.load`."""

MAX_MULTILABEL_CLASSES = 16
"""A multi-label mask is one 16-bit PNG bit field (:func:`pack_multilabel`)."""

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

    @property
    def first_foreground(self) -> int:
        """Index of the first reported class in ``names`` (and in per-class pixel counts): 1 skips background."""
        return 0 if self.multilabel else 1

    def describe(self) -> str:
        """The task and its classes in words, for messages: ``lungs (background, lung, heart; softmax)``."""
        kind = "multi-label" if self.multilabel else "softmax"
        return f"{self.task} ({', '.join(self.names)}; {kind})"

    def decode_mask(self, stored: np.ndarray) -> np.ndarray:
        """A stored mask (uint8/uint16 ``[H, W]``, see the module docstring) as training reads it, the one place
        masks are reduced: single-label class indices uint8 ``[H, W]`` (a two-class mask: any non-zero is class 1),
        multi-label 0/1 planes uint8 ``[H, W, C]`` (channels last for albumentations)."""
        stored = np.asarray(stored)
        if self.multilabel:
            return unpack_multilabel(stored, self.num_labels)
        if self.num_labels == 2:
            return binarize_mask(stored)
        return stored.astype(np.uint8)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/labels.json`` (atomically): ``{"task": ..., "names": [...], "multilabel": ...}``."""
        spec = {"task": self.task, "names": list(self.names), "multilabel": self.multilabel}
        return atomic_write_text(Path(folder) / LABELS_FILENAME, json.dumps(spec, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelSet:
        """The label set a labels JSON file declares (the format :meth:`save` writes).

        ``task`` ``pneumothorax`` or ``chestxdet`` names a built-in set; any other task (default ``custom``) needs
        ``names``: a list of strings, single-label 2..255 of them with ``"background"`` first, multi-label
        (``"multilabel": true``) 1..16, each name once and not empty. Raises :class:`~cxrseg.errors.DataError`
        naming the file and the key.
        """
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: cannot read the labels JSON ({error}); see README, Data.") from error
        if not isinstance(spec, dict):
            raise DataError(f"{path}: expected a JSON object with keys 'task', 'names', 'multilabel'.")
        task = spec.get("task", "custom")
        if not isinstance(task, str):
            raise DataError(f"{path}: key 'task' must be a string ({', '.join(map(repr, TASKS))} or your own name).")
        multilabel = spec.get("multilabel", TASKS[task].multilabel if task in TASKS else False)
        if not isinstance(multilabel, bool):
            raise DataError(f"{path}: key 'multilabel' must be true or false, got {multilabel!r}.")
        names = spec.get("names")
        if task in TASKS:
            builtin = TASKS[task]
            if (names is not None and list(names) != list(builtin.names)) or multilabel != builtin.multilabel:
                raise DataError(
                    f"{path}: task {task!r} is built in with names {list(builtin.names)} and multilabel "
                    f"{str(builtin.multilabel).lower()}; drop keys 'names' and 'multilabel' or give another task."
                )
            return builtin
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise DataError(
                f"{path}: key 'names' must be a list of class names (single-label: 'background' first); task "
                f"{task!r} is not built in ({', '.join(map(repr, TASKS))})."
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataError(
                f"{path}: key 'names' names {', '.join(map(repr, repeated))} more than once; each class needs one "
                "name of its own (its index is its value in the masks)."
            )
        if any(not name.strip() for name in names):
            raise DataError(f"{path}: key 'names' holds an empty class name; give every class a name.")
        if multilabel and len(names) > MAX_MULTILABEL_CLASSES:
            raise DataError(
                f"{path}: key 'names': at most {MAX_MULTILABEL_CLASSES} multi-label classes fit a 16-bit mask, "
                f"got {len(names)}."
            )
        if not multilabel and not (2 <= len(names) <= 255 and names[0] == "background"):
            raise DataError(
                f"{path}: key 'names': a single-label set needs 2..255 names with 'background' first, got {names}."
            )
        return cls(task, tuple(names), multilabel)


PNEUMOTHORAX = LabelSet("pneumothorax", ("background", "pneumothorax"), multilabel=False)
CHESTXDET = LabelSet("chestxdet", CHESTXDET_CLASSES, multilabel=True)
TASKS = {labels.task: labels for labels in (PNEUMOTHORAX, CHESTXDET)}


def get_labels(task: str) -> LabelSet:
    """The built-in label set of ``task`` (``pneumothorax`` or ``chestxdet``)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task]


TASK_KEY = "cxrseg_task"
"""The key of a model's ``config.json`` that holds its task's name (not a transformers config field)."""
MULTILABEL_PROBLEM = "multi_label_classification"
SINGLE_LABEL_PROBLEM = "single_label_classification"


def label_config(labels: LabelSet) -> dict:
    """What a model's ``config.json`` records of its label set (keyword arguments of a transformers config):
    ``id2label``/``label2id``, ``problem_type`` (multi- or single-label) and ``cxrseg_task``."""
    return {
        "num_labels": labels.num_labels,
        "id2label": labels.id2label,
        "label2id": labels.label2id,
        "problem_type": MULTILABEL_PROBLEM if labels.multilabel else SINGLE_LABEL_PROBLEM,
        TASK_KEY: labels.task,
    }


def labels_from_config(config: Mapping | object) -> LabelSet:
    """The label set of a saved model from its config (a transformers config or the ``config.json`` dict):
    ``id2label`` (keys may be strings), ``problem_type`` and ``cxrseg_task`` as :func:`label_config` writes them.
    A config without the last two (models saved before them) is read as before: a built-in set whose names match,
    else multi-label unless the first name is ``background``."""
    get = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key, None)
    id2label = get("id2label")
    names = tuple(id2label[k] for k in sorted(id2label, key=int))
    task, problem = get(TASK_KEY), get("problem_type")
    if problem in (MULTILABEL_PROBLEM, SINGLE_LABEL_PROBLEM):
        multilabel = problem == MULTILABEL_PROBLEM
    else:
        multilabel = None
    for builtin in TASKS.values():
        if builtin.names == names and multilabel in (None, builtin.multilabel) and task in (None, builtin.task):
            return builtin
    if multilabel is None:
        multilabel = names[0] != "background"
    return LabelSet(task if isinstance(task, str) and task else "custom", names, multilabel=multilabel)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A stored single-label mask (0/1 or 0/255, uint8 [H, W]) as class indices: any non-zero is class 1."""
    return (mask != 0).astype(np.uint8)


def pack_multilabel(planes: np.ndarray) -> np.ndarray:
    """Binary planes ``[C, H, W]`` (C <= :data:`MAX_MULTILABEL_CLASSES`) as one uint16 ``[H, W]`` bit field: bit
    ``c`` set where class ``c``."""
    if planes.shape[0] > MAX_MULTILABEL_CLASSES:
        raise ValueError(f"At most {MAX_MULTILABEL_CLASSES} classes fit a 16-bit mask, got {planes.shape[0]}.")
    bits = (np.asarray(planes) != 0).astype(np.uint16)
    weights = (np.uint16(1) << np.arange(bits.shape[0], dtype=np.uint16))[:, None, None]
    return (bits * weights).sum(axis=0, dtype=np.uint16)


def unpack_multilabel(packed: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse of :func:`pack_multilabel`: uint16 ``[H, W]`` → uint8 ``[H, W, C]`` 0/1 planes (channels last for
    albumentations)."""
    packed = np.asarray(packed).astype(np.uint16)
    shifts = np.arange(num_classes, dtype=np.uint16)
    return ((packed[..., None] >> shifts) & 1).astype(np.uint8)
