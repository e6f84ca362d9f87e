"""Train/validation splits and cross-validation folds: made once, seeded, stratified, saved as ``splits.json``
(nnU-Net style) and reused when present. Validation keeps the natural prevalence; undersampling is only the
sampler's job.

``splits.json`` holds either one split, ``{"train": [ids], "val": [ids]}``, or K folds, a list
``[{"train": [ids], "val": [ids]}, ...]`` like nnU-Net's ``splits_final.json``: every image is in exactly one fold's
``val``, a fold's ``train`` is every other image, and the images of one patient (:mod:`cxrseg.data.groups`) are all
in the same fold.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from cxrseg.errors import DataError
from cxrseg.files import atomic_write_text

Split = dict[str, list[str]]
"""{"train": image ids, "val": image ids}."""
"""The file in a training output folder that holds its split (or its list of folds)."""


def make_split(image_ids: Sequence[str], is_positive: Sequence[bool], val_fraction: float, seed: int) -> Split:
    """{"train": ids, "val": ids}, each sorted; stratified so both splits keep the positive fraction."""
    stratify = (
        list(is_positive)
        if 0 < sum(is_positive) < len(is_positive) and min(sum(is_positive), len(is_positive) - sum(is_positive)) >= 2
        else None
    )
    try:
        train, val = train_test_split(list(image_ids), test_size=val_fraction, random_state=seed, stratify=stratify)
    except ValueError as error:  # sklearn: a split would be empty (or too small to stratify)
        raise DataError(
            f"val_fraction={val_fraction} of {len(image_ids)} images cannot make a training and a validation split "
            f"({error}); change val_fraction or add images."
        ) from error
    return {"train": sorted(train), "val": sorted(val)}


def read_splits(path: Path) -> object:
    """The JSON in ``path`` (a split or a list of folds, unchecked); :class:`~cxrseg.errors.DataError` if unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the splits file ({error}); remove it to make a new one.") from error


def _check_split(split: object, path: Path, known: set[str], where: str = "") -> Split:
    if not isinstance(split, dict):
        raise DataError(f"{path}{where}: expected an object with 'train' and 'val' lists of image ids.")
    for name in ("train", "val"):
        if not isinstance(split.get(name), list) or not split[name]:
            raise DataError(f"{path}{where}: split {name!r} is missing or empty.")
        unknown = [i for i in split[name] if i not in known]
        if unknown:
            raise DataError(f"{path}{where}: {len(unknown)} {name} ids are not in the data (first: {unknown[0]!r}).")
    both = sorted(set(split["train"]) & set(split["val"]))
    if both:
        raise DataError(f"{path}{where}: {len(both)} images are in both train and val (first: {both[0]!r}).")
    return {"train": list(split["train"]), "val": list(split["val"])}


def load_or_make_split(
    path: str | os.PathLike, image_ids: Sequence[str], is_positive: Sequence[bool], val_fraction: float, seed: int
) -> Split:
    """The split saved at ``path`` if it exists (every id must be in ``image_ids``), else a new one, which the
    caller saves (:func:`save_split`) once everything the run needs has been checked."""
    path = Path(path)
    if path.exists():
        split = read_splits(path)
        if isinstance(split, list):
            raise DataError(
                f"{path} holds {len(split)} cross-validation folds, not one split: set num_folds: {len(split)} "
                "(and fold) in the recipe, or choose another output_dir."
            )
        return _check_split(split, path, set(image_ids))
    return make_split(image_ids, is_positive, val_fraction, seed)


def save_split(path: str | os.PathLike, split: Split | list[Split]) -> None:
    """Write ``split`` (or a list of folds) as ``splits.json`` at ``path`` (atomically)."""
    atomic_write_text(path, json.dumps(split, indent=1))


def rarest_class_strata(presence: Sequence[Sequence[bool]]) -> list[int]:
    """The stratum of each image: the index of its rarest class present (rarest = in the fewest images; ties: the
    lower index), or -1 for an image without any. presence: per image, one flag per foreground class. For one
    class this is positivity (0 positive, -1 negative)."""
    frequency = np.sum(np.asarray(presence, dtype=bool), axis=0) if len(presence) else np.zeros(0)
    strata = []
    for flags in presence:
        present = [c for c, on in enumerate(flags) if on]
        strata.append(min(present, key=lambda c: (frequency[c], c)) if present else -1)
    return strata


def make_folds(
    image_ids: Sequence[str], presence: Sequence[Sequence[bool]], groups: Sequence[str], num_folds: int, seed: int
) -> list[Split]:
    """K folds of ``image_ids`` (see the module docstring), each list sorted.

    presence: per image, one flag per foreground class (single-label binary: ``(is_positive,)``). Folds are
    stratified by :func:`rarest_class_strata`. groups: one group per image (a patient); a group's images share a
    fold.

    Groups go largest first (ties in a seeded random order), each to the fold holding the least of its strata
    (relative to each stratum's total), then the least of all its classes present (relative to each class's total:
    balances the common classes too), then the fewest images, then a seeded random fold. With single-image groups
    each stratum's count per fold differs by at most one; multi-image groups are placed first so that the single
    images level them out.

    Written by hand because sklearn's ``StratifiedGroupKFold`` does not level the counts: on SIIM-like groups (most
    patients one image, some up to three) its folds differ by up to 3 positives where ±1 is reachable.
    """
    if num_folds < 2:
        raise DataError(f"num_folds must be at least 2, got {num_folds}.")
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    if len(members) < num_folds:
        raise DataError(
            f"{len(image_ids)} images in {len(members)} patient groups cannot fill {num_folds} folds; lower num_folds."
        )
    classes = np.asarray(presence, dtype=np.float64).reshape(len(image_ids), -1)
    strata = np.eye(classes.shape[1] + 1)[np.asarray(rarest_class_strata(classes.astype(bool))) + 1]  # -1 → column 0
    class_share = classes / np.maximum(classes.sum(0), 1)
    stratum_share = strata / np.maximum(strata.sum(0), 1)
    rng = np.random.default_rng(seed)
    names = list(members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the random order
    stratum_load = np.zeros((num_folds, strata.shape[1]))
    class_load = np.zeros((num_folds, classes.shape[1]))
    fold_sizes = np.zeros(num_folds)
    fold_of_group = {}
    for group in order:
        rows = members[group]
        by_stratum, by_class = stratum_share[rows].sum(0), class_share[rows].sum(0)
        keys = (rng.permutation(num_folds), fold_sizes, class_load @ by_class, stratum_load @ by_stratum)
        fold = int(np.lexsort(keys)[0])  # the last key is the primary one
        stratum_load[fold] += by_stratum
        class_load[fold] += by_class
        fold_sizes[fold] += len(rows)
        fold_of_group[group] = fold
    fold_of_image = [fold_of_group[g] for g in groups]
    return [
        {
            "train": sorted(i for i, f in zip(image_ids, fold_of_image) if f != fold),
            "val": sorted(i for i, f in zip(image_ids, fold_of_image) if f == fold),
        }
        for fold in range(num_folds)
    ]


def check_folds(folds: object, path: Path, image_ids: Sequence[str], groups: Sequence[str]) -> list[Split]:
    """``folds`` as read from ``path``, validated against the data: a non-empty list of splits with known ids,
    every image in exactly one fold's ``val``, and no patient group in two folds' ``val`` or in both ``train`` and
    ``val`` of one fold. Raises :class:`~cxrseg.errors.DataError` naming the file, the fold and an image."""
    if not isinstance(folds, list) or not folds:
        raise DataError(f"{path}: expected a list of folds, each {{'train': [...], 'val': [...]}}.")
    known = set(image_ids)
    checked = [_check_split(fold, path, known, f", fold {k}") for k, fold in enumerate(folds)]
    fold_of: dict[str, int] = {}
    for k, fold in enumerate(checked):
        for image_id in fold["val"]:
            if image_id in fold_of:
                raise DataError(
                    f"{path}: image {image_id!r} is in the validation sets of folds {fold_of[image_id]} and {k}; "
                    "folds must not overlap."
                )
            fold_of[image_id] = k
    missing = [i for i in image_ids if i not in fold_of]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} images of the data are in no fold's validation set (first: {missing[0]!r}): "
            "the data changed since the folds were made; use a new output_dir."
        )
    group_of = dict(zip(image_ids, groups))
    val_fold_of_group: dict[str, tuple[int, str]] = {}
    for image_id, k in fold_of.items():
        group = group_of[image_id]
        first = val_fold_of_group.setdefault(group, (k, image_id))
        if first[0] != k:
            raise DataError(
                f"{path}: {group} has images in the validation sets of folds {first[0]} ({first[1]!r}) and {k} "
                f"({image_id!r}); one patient's images must share a fold."
            )
    # Every image is in one fold's val, a group's images share it, and train and val do not overlap: so no group
    # is in both train and val of a fold.
    return checked


def load_or_make_folds(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    presence: Sequence[Sequence[bool]],
    groups: Sequence[str],
    num_folds: int,
    seed: int,
    save: bool = True,
) -> list[Split]:
    """The folds saved at ``path`` if it exists (:func:`check_folds`; their number must be ``num_folds``), else new
    ones (:func:`make_folds`) saved there (with ``save``; without, only checked and made)."""
    path = Path(path)
    if path.exists():
        folds = read_splits(path)
        if isinstance(folds, dict):
            raise DataError(
                f"{path} holds one train/val split, not {num_folds} folds: choose another output_dir for "
                "cross-validation."
            )
        folds = check_folds(folds, path, image_ids, groups)
        if len(folds) != num_folds:
            raise DataError(f"{path} holds {len(folds)} folds but the recipe says num_folds: {num_folds}.")
        return folds
    folds = make_folds(image_ids, presence, groups, num_folds, seed)
    if save:
        save_split(path, folds)
    return folds
