"""The PNG layout as a ``datasets.DatasetDict``: ``prepare --save-dataset`` (``OUT/hf_dataset``) and
``--push-to-hub`` (always a private repository).

A pushed dataset repository (:func:`push_dataset`), which ``data_dir: hf://datasets/ID`` trains from
(:func:`cxrseg.data.dataset.index_training_source`)::

    data/<split>-NNNNN-of-NNNNN.parquet   each split in shards of at most MAX_SHARD_BYTES of PNG files, the image and
                                          mask bytes embedded (the Hub's and ``datasets.push_to_hub``'s naming)
    labels.json                           the label set (cxrseg.labels.LabelSet)
    README.md                             a dataset card: its ``configs`` name the splits' files; private, with terms
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import cv2
from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData

from cxrseg.constants import LABELS_FILENAME
from cxrseg.errors import PrepareError
from cxrseg.hub.access import hub_api

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


MAX_SHARD_BYTES = 500 * 2**20
"""Largest parquet shard of a pushed split, in bytes of PNG files (``datasets.push_to_hub``'s default 500 MB)."""


def dataset_repo_files(root: str | os.PathLike, folder: str | os.PathLike, positives=None) -> dict[str, Path]:
    """Write the files of the dataset repository of the layout at ``root`` (module docstring) into ``folder``;
    returns path in the repository → local file. positives: as :func:`layout_to_datasetdict`'s."""
    # deferred for start-up time: torch and datasets load only when this runs
    from datasets.table import embed_table_storage

    root, folder = Path(root), Path(folder)
    dataset = layout_to_datasetdict(root, positives)
    files: dict[str, Path] = {}
    configs = []
    for split, rows in dataset.items():
        size = sum(p.stat().st_size for kind in ("images", "masks") for p in (root / kind / split).glob("*.png"))
        num_shards = max(1, min(rows.num_rows, math.ceil(size / MAX_SHARD_BYTES)))
        for index in range(num_shards):
            shard = rows.shard(num_shards, index, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True, keep_in_memory=True)  # the PNG bytes, not paths
            name = f"data/{split}-{index:05d}-of-{num_shards:05d}.parquet"
            (folder / "data").mkdir(parents=True, exist_ok=True)
            shard.with_format(None).to_parquet(str(folder / name))
            files[name] = folder / name
        configs.append({"split": split, "path": f"data/{split}-*"})
    files[LABELS_FILENAME] = root / LABELS_FILENAME
    card = DatasetCard.from_template(
        DatasetCardData(configs=[{"config_name": "default", "data_files": configs}], tags=["cxrseg", "chest-x-ray"]),
        template_str="---\n{{ card_data }}\n---\n\n# Chest radiographs in cxrseg's layout\n\nPrepared with "
        "`cxrseg prepare`; train with `data_dir: hf://datasets/<this id>`. Private: the source data's terms may "
        "forbid redistribution (SIIM-ACR's do).\n",
    )
    card.save(folder / "README.md")
    files["README.md"] = folder / "README.md"
    return files


def push_dataset(
    root: Path, repo_id: str, positives: Mapping[tuple[str, str], bool] | None = None, token: str | None = None
) -> str:
    """Push the layout at ``root`` to the Hub dataset repository ``repo_id`` (module docstring), always private:
    SIIM-ACR's terms forbid public redistribution. One commit through cxrseg's Hub client
    (:func:`cxrseg.hub.access.hub_api`, with the token of ``token``, ``HF_TOKEN`` or ``hf auth login``), as model
    pushes are. positives: as :func:`layout_to_datasetdict`'s. Returns the commit URL."""
    logger.info("Pushing the dataset to the Hub as a PRIVATE repository %s.", repo_id)
    api = hub_api(token)
    with tempfile.TemporaryDirectory(prefix="cxrseg-push-") as folder:
        files = dataset_repo_files(root, folder, positives)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()]
        api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
        commit = api.create_commit(repo_id, operations, repo_type="dataset", commit_message="Upload cxrseg dataset")
    return getattr(commit, "commit_url", str(commit))
