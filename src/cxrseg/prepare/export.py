"""The PNG layout as a ``datasets.DatasetDict``: ``prepare --save-dataset`` (``OUT/hf_dataset``) and
``--push-to-hub`` (always a private repository)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import cv2

from cxrseg.errors import PrepareError

logger = logging.getLogger(__name__)

SAVED_DATASET_FOLDER = "hf_dataset"
"""Where ``--save-dataset`` writes the ``save_to_disk`` folder, inside the layout."""


def layout_to_datasetdict(root: str | os.PathLike, positives: Mapping[tuple[str, str], bool] | None = None):
    """The PNG layout at ``root`` as a ``datasets.DatasetDict`` with one split per ``images/<split>/`` folder.

    Columns: :data:`cxrseg.data.features.LAYOUT_FEATURES`. The files' bytes are embedded when the dataset is saved
    (``save_to_disk``) or pushed. ``root/labels.json`` names the classes. positives: ``is_positive`` of each
    labelled (split, image id), when the caller knows it (``cxrseg prepare`` does); else each mask is read for it.
    """
    import datasets

    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.data.features import LAYOUT_FEATURES

    root = Path(root)
    splits = {}
    for split_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        columns: dict[str, list] = {name: [] for name in LAYOUT_FEATURES}
        for image_path in sorted(split_dir.glob("*.png")):
            mask_path = root / "masks" / split_dir.name / image_path.name
            positive = None
            if mask_path.exists():
                positive = positives.get((split_dir.name, image_path.stem)) if positives is not None else None
                if positive is None:
                    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
                    if mask is None:
                        raise PrepareError(f"{mask_path}: not a readable PNG.")
                    positive = bool(mask.any())
            columns["image"].append(str(image_path))
            columns["mask"].append(None if positive is None else str(mask_path))
            columns["image_id"].append(image_path.stem)
            columns["is_positive"].append(positive)
        splits[split_dir.name] = datasets.Dataset.from_dict(columns, features=LAYOUT_FEATURES)
    if not splits:
        raise PrepareError(f"{root / 'images'} holds no split folders: not a PNG layout.")
    return datasets.DatasetDict(splits)


def save_dataset(root: Path, positives: Mapping[tuple[str, str], bool] | None = None) -> Path:
    """Write the layout at ``root`` with ``save_to_disk`` into ``root/hf_dataset``; returns that folder.
    positives: as :func:`layout_to_datasetdict`'s."""
    folder = root / SAVED_DATASET_FOLDER
    layout_to_datasetdict(root, positives).save_to_disk(str(folder))
    return folder


def push_dataset(root: Path, repo_id: str, positives: Mapping[tuple[str, str], bool] | None = None) -> None:
    """Push the layout at ``root`` to the Hub repository ``repo_id``, always private: SIIM-ACR's terms forbid
    public redistribution. positives: as :func:`layout_to_datasetdict`'s."""
    logger.info("Pushing the dataset to the Hub as a PRIVATE repository %s.", repo_id)
    layout_to_datasetdict(root, positives).push_to_hub(repo_id, private=True)
