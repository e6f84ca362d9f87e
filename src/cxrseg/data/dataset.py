"""From a data folder to the ``datasets`` datasets the Trainer reads, with on-the-fly albumentations."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from cxrseg.config import DataArguments, SamplingArguments
from cxrseg.constants import LABELS_FILENAME
from cxrseg.data.features import LAYOUT_FEATURES
from cxrseg.data.png_layout import DataError, IndexedImage, index_layout, mask_pixel_counts, read_layout_labels
from cxrseg.data.prior import compute_prior_mask
from cxrseg.data.sampling import BalancedSampler, ClassBalancedSampler, EpochSampler, SampleKey, ShuffledSampler
from cxrseg.data.splits import load_or_make_split
from cxrseg.data.transforms import ToModelInputs, build_transforms
from cxrseg.hub.access import hub_dataset_id
from cxrseg.imageio.pixels import to_gray
from cxrseg.labels import LabelSet

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """train: :class:`AugmentedDataset` (rows read by sampler key, augmented). val: ``datasets.Dataset`` with columns
    image, mask, image_id, is_positive and a transform that yields ``pixel_values`` and ``labels``. pixel_counts: per
    class, summed over the training split (stored resolution).
    train_class_presence: per training row, one flag per foreground class (``labels.foreground``): any pixel of it.
    prior_mask: the training split's mean mask at 0.5 at the training size, bool [K, S, S]
    (:func:`cxrseg.data.prior.compute_prior_mask`), the baseline evaluation reports."""

    train: AugmentedDataset
    val: datasets.Dataset
    train_is_positive: list[bool]
    pixel_counts: list[int]
    num_pixels: int
    split: dict[str, list[str]]
    train_class_presence: list[tuple[bool, ...]] = field(default_factory=list)
    prior_mask: np.ndarray | None = None


def rows_to_dataset(rows: list[IndexedImage]) -> datasets.Dataset:
    """Indexed pairs as a ``datasets.Dataset`` of :data:`~cxrseg.data.features.LAYOUT_FEATURES` (files decoded
    when rows are read)."""
    return datasets.Dataset.from_dict(
        {
            "image": [r.image_path for r in rows],
            "mask": [r.mask_path for r in rows],
            "image_id": [r.image_id for r in rows],
            "is_positive": [r.is_positive for r in rows],
        },
        features=LAYOUT_FEATURES,
    )


class PairTransform:
    """One decoded row (image, stored mask) → ``pixel_values`` and ``labels`` (see
    :class:`~cxrseg.data.transforms.ToModelInputs`): masks become class indices or planes here, exactly once; image
    and mask go through one albumentations call of the ``augmentation`` pipeline."""

    def __init__(self, labels: LabelSet, augmentation: str, image_size: int, mean, std) -> None:
        self.labels = labels
        self.pipeline = build_transforms(augmentation, image_size)
        self.random = augmentation != "none"
        self.to_inputs = ToModelInputs(mean, std)

    def __call__(self, image: Any, mask: Any, seed: int | None = None) -> dict[str, torch.Tensor]:
        """``seed``: required with random augmentation; the draws are a function of it alone."""
        if self.random:
            if seed is None:
                raise ValueError("Random augmentation needs a seed (read training rows by SampleKey).")
            # One stream shared by every step of the pipeline. (``set_random_seed`` would give each step its own
            # generator with the same seed, so steps with equal p would always be applied together.)
            self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        mask = self.labels.decode_mask(np.asarray(mask))
        out = self.pipeline(image=to_gray(image), mask=mask)
        return {"pixel_values": self.to_inputs.image(out["image"]), "labels": self.to_inputs.labels(out["mask"])}


def make_transform(
    labels: LabelSet, image_size: int, mean, std
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """The ``set_transform`` function of evaluation: a batch of decoded rows → ``pixel_values`` and ``labels``,
    resized without augmentation (:class:`PairTransform` with ``"none"``), deterministic."""
    pair = PairTransform(labels, "none", image_size, mean, std)

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        samples = [pair(image, mask) for image, mask in zip(batch["image"], batch["mask"])]
        return {key: [sample[key] for sample in samples] for key in ("pixel_values", "labels")}

    return transform


class AugmentedDataset(torch.utils.data.Dataset):
    """The training split as the Trainer reads it: items are looked up by :class:`~cxrseg.data.sampling.SampleKey`
    (what the samplers yield) and augmented with the key's seed, so an item is a pure function of
    ``(row, seed, epoch, position)`` whatever the prefetching, data-loader workers, sharding or resumption. An int
    ``i`` reads row ``i`` as the key ``(i, seed 0, epoch 0, position i)``.

    rows: the split's ``datasets.Dataset`` (columns image, mask, image_id, is_positive). Items: ``pixel_values``
    float32 [3, S, S] and ``labels`` (int64 [S, S] or float32 [C, S, S]), S = ``image_size``.
    """

    def __init__(self, rows: datasets.Dataset, transform: PairTransform) -> None:
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list[SampleKey | int]) -> list[dict[str, torch.Tensor]]:
        keys = [key if isinstance(key, SampleKey) else SampleKey(int(key), 0, 0, int(key)) for key in keys]
        batch = self.rows[[key.row for key in keys]]
        return [
            self.transform(image, mask, key.augmentation_seed())
            for key, image, mask in zip(keys, batch["image"], batch["mask"])
        ]

    def __getitem__(self, key: SampleKey | int) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """True for a folder written by ``DatasetDict.save_to_disk`` (e.g. ``cxrseg prepare ... --save-dataset``)."""
    return (Path(path) / "dataset_dict.json").is_file()


def _index_saved_dataset(dataset: datasets.Dataset, labels: LabelSet, num_proc: int) -> list[IndexedImage]:
    """Validate and count the masks of a saved dataset with ``Dataset.map`` (cached by ``datasets`` beside it)."""

    def count(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        counts, sizes = [], []
        for image_id, image, mask in zip(batch["image_id"], batch["image"], batch["mask"]):
            if mask is None:
                raise DataError(f"Row {image_id!r} of the saved dataset has no mask: only labelled splits train.")
            mask = np.asarray(mask)
            if image.size != (mask.shape[1], mask.shape[0]):
                raise DataError(
                    f"Row {image_id!r}: image is {image.size[0]}x{image.size[1]}, mask "
                    f"{mask.shape[1]}x{mask.shape[0]} (width x height)."
                )
            counts.append(list(mask_pixel_counts(mask, labels, f"row {image_id!r}")))
            sizes.append(list(image.size))
        return {"pixel_counts": counts, "size": sizes}

    columns = dataset.select_columns(["image_id", "image", "mask"])
    counted = columns.map(
        count,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["image", "mask"],
        desc="Checking masks",
    )
    return [
        IndexedImage(
            row["image_id"], "", "", row["size"][0], row["size"][1], tuple(row["pixel_counts"]), labels.multilabel
        )
        for row in counted
    ]


def load_hub_dataset(data_dir: str) -> tuple[datasets.Dataset, LabelSet]:
    """The ``train`` split and the label set of the Hub dataset ``data_dir`` names (``hf://datasets/ID[@REVISION]``,
    as ``cxrseg prepare --push-to-hub`` pushes it: :mod:`cxrseg.prepare.export`), with ``datasets.load_dataset``
    (downloaded once into the ``datasets`` cache) and ``labels.json`` (:func:`_hub_labels`). The token is
    huggingface_hub's (``HF_TOKEN`` or ``hf auth login``). Raises :class:`DataError` naming the id and what to do."""
    labels = _hub_labels(data_dir)
    repo_id, revision = hub_dataset_id(data_dir)
    try:
        source = datasets.load_dataset(repo_id, revision=revision, split="train")
    except Exception as error:  # any Hub, network or format failure: one line naming the dataset
        raise _hub_dataset_error(data_dir, error) from error
    return source, labels


def _hub_labels(data_dir: str) -> LabelSet:
    """The label set of the Hub dataset ``data_dir`` names (its ``labels.json``), without its images."""
    from huggingface_hub import hf_hub_download  # start-up time: only for a Hub dataset

    repo_id, revision = hub_dataset_id(data_dir)
    try:
        labels_file = hf_hub_download(repo_id, LABELS_FILENAME, repo_type="dataset", revision=revision)
    except Exception as error:  # any Hub or network failure: one line naming the dataset
        raise _hub_dataset_error(data_dir, error) from error
    return read_layout_labels(Path(labels_file).parent)


def _hub_dataset_error(data_dir: str, error: Exception) -> DataError:
    """The one-line error of a Hub dataset that cannot be read, naming it and what to check."""
    repo_id, revision = hub_dataset_id(data_dir)
    return DataError(
        f"data_dir {data_dir}: cannot load the Hub dataset {repo_id}"
        f"{f' at revision {revision}' if revision else ''} ({type(error).__name__}: {' '.join(str(error).split())}"
        "). Check the id and revision, the network, and the token of a private dataset (`hf auth login` or "
        "HF_TOKEN); it must hold a train split and labels.json, as `cxrseg prepare --push-to-hub` writes them."
    )


def data_labels(data_dir: str | os.PathLike) -> LabelSet:
    """The label set the data at ``data_dir`` declares: a PNG layout's ``labels.json`` (pneumothorax without one)
    or, for a saved ``datasets`` folder, the ``labels.json`` in it or its parent (as ``cxrseg prepare
    --save-dataset`` writes them), or a Hub dataset's ``labels.json``. Raises :class:`DataError` for a missing folder
    or a bad labels file."""
    if hub_dataset_id(str(data_dir)) is not None:
        return _hub_labels(str(data_dir))
    root = Path(data_dir)
    if not root.exists():
        raise DataError(
            f"Data folder {root} does not exist. Prepare data (README, Data) or run `cxrseg make-demo-data`."
        )
    saved = is_saved_dataset(root)
    return read_layout_labels(root if (root / LABELS_FILENAME).exists() or not saved else root.parent)


def index_training_source(data_args: DataArguments, labels: LabelSet) -> tuple[datasets.Dataset, list[IndexedImage]]:
    """The training images of ``data_args.data_dir`` as a dataset (files decoded when rows are read) and their
    validated index (pixel counts per class), row for row.

    ``data_dir`` is a PNG layout root, a saved ``datasets`` folder (its ``train`` split; labels from a
    ``labels.json`` in the folder or its parent, as ``cxrseg prepare --save-dataset`` writes them), or a Hub dataset
    ``hf://datasets/ID[@REVISION]`` (:func:`load_hub_dataset`), validated and indexed as a saved folder is.
    """
    if hub_dataset_id(data_args.data_dir) is not None:
        source, declared = load_hub_dataset(data_args.data_dir)
        _check_task(declared, labels, data_args.data_dir)
        return source, _index_saved_dataset(source, labels, data_args.preprocessing_num_workers)
    root = Path(data_args.data_dir)
    declared = data_labels(root)
    _check_task(declared, labels, root)
    if is_saved_dataset(root):
        source = datasets.load_from_disk(str(root))["train"]
        return source, _index_saved_dataset(source, labels, data_args.preprocessing_num_workers)
    index = index_layout(root, "train", labels, num_proc=data_args.preprocessing_num_workers)
    return rows_to_dataset(index), index


def _check_task(declared: LabelSet, labels: LabelSet, where: object) -> None:
    if declared != labels:
        raise DataError(f"{where} declares {declared.describe()} but the run expects {labels.describe()}.")


def class_presence(row: IndexedImage, labels: LabelSet) -> tuple[bool, ...]:
    """One flag per foreground class (``labels.foreground``): whether the image has any pixel of it."""
    return tuple(n > 0 for n in row.pixel_counts[labels.first_foreground :])


def load_training_data(
    data_args: DataArguments,
    labels: LabelSet,
    split_path: str | os.PathLike,
    *,
    mean,
    std,
    indexed: tuple[datasets.Dataset, list[IndexedImage]] | None = None,
) -> TrainingData:
    """Index and validate ``data_args.data_dir`` (:func:`index_training_source`; ``indexed``: its result, when the
    caller has it already), split it (``split_path``), and attach the transforms, which normalise with the model's
    ``mean`` and ``std`` (3 floats each, as the image processor's)."""
    source, index = indexed if indexed is not None else index_training_source(data_args, labels)
    row_of = {row.image_id: i for i, row in enumerate(index)}
    positives = [row.is_positive for row in index]
    split = load_or_make_split(split_path, list(row_of), positives, data_args.val_fraction, data_args.split_seed)
    train_ids = split["train"][: data_args.max_train_samples]
    val_ids = split["val"][: data_args.max_eval_samples]
    train = source.select([row_of[i] for i in train_ids])
    val = source.select([row_of[i] for i in val_ids])
    augmented = AugmentedDataset(train, PairTransform(labels, data_args.augmentation, data_args.image_size, mean, std))
    val.set_transform(make_transform(labels, data_args.image_size, mean, std))
    train_rows = [index[row_of[i]] for i in train_ids]
    pixel_counts = np.sum([row.pixel_counts for row in train_rows], axis=0).tolist()
    num_pixels = sum(r.width * r.height for r in train_rows)
    logger.info(
        "Data: %d train (%d positive), %d val (%d positive) from %s",
        len(train_ids),
        sum(r.is_positive for r in train_rows),
        len(val_ids),
        sum(index[row_of[i]].is_positive for i in val_ids),
        data_args.data_dir,
    )
    presence = [class_presence(r, labels) for r in train_rows]
    prior = compute_prior_mask(_MaskColumn(train), labels, data_args.image_size)
    return TrainingData(
        augmented, val, [r.is_positive for r in train_rows], pixel_counts, num_pixels, split, presence, prior
    )


class _MaskColumn:
    """The stored masks of a dataset's rows, decoded one at a time when indexed (not the whole column at once)."""

    def __init__(self, rows: datasets.Dataset) -> None:
        self.rows = rows.select_columns(["mask"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        return self.rows[index]["mask"]


def build_sampler(
    sampling_args: SamplingArguments, labels: LabelSet, data: TrainingData, seed: int
) -> tuple[EpochSampler, str | None]:
    """The recipe's training sampler over ``data.train``'s rows, and why balanced sampling was not used (None when
    it was, or was not asked for), e.g. "every training image holds all of lung, heart (240 images)".

    :class:`ShuffledSampler` unless ``balanced_sampling``; then :class:`ClassBalancedSampler` for multi-label tasks,
    else :class:`BalancedSampler` (an image is positive if it holds any of the balanced classes). Both balance
    over ``balance_classes`` (every foreground class when None). When there is nothing to balance — single-label:
    every training image is positive, or none is; multi-label: every image holds every balanced class, or none
    holds any — a balanced epoch would only draw the same images with replacement (about 63% of them distinct), so
    the plain shuffle is used and the reason returned.
    """
    if not sampling_args.balanced_sampling:
        return ShuffledSampler(len(data.train), seed=seed), None
    balanced = list(sampling_args.balance_classes or labels.foreground)
    columns = [labels.foreground.index(name) for name in balanced]
    presence = [tuple(row[c] for c in columns) for row in data.train_class_presence]
    # What the sampler tells apart: single-label, images holding any balanced class from the others; multi-label,
    # images by the classes they hold (all images holding all of them weigh the same).
    flags = presence if labels.multilabel else [(any(row),) for row in presence]
    every, none = all(all(row) for row in flags), not any(any(row) for row in flags)
    if every or none:
        quantifier = ("all of " if labels.multilabel else "one of ") if every else "any of "
        what = (quantifier if len(balanced) > 1 else "") + ", ".join(balanced)
        which = "every training image holds" if every else "no training image holds"
        return ShuffledSampler(len(data.train), seed=seed), f"{which} {what} ({len(presence)} images)"
    if labels.multilabel:
        sampler = ClassBalancedSampler(
            presence, sampling_args.class_balance_power, sampling_args.empty_image_weight, seed=seed
        )
    else:
        sampler = BalancedSampler(
            [row[0] for row in flags], sampling_args.negative_keep_ratio, sampling_args.positive_weight, seed=seed
        )
    return sampler, None
