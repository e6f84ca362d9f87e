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

from cxrseg.errors import DataError
from cxrseg.files import atomic_write_text

Split = dict[str, list[str]]
"""{"train": image ids, "val": image ids}."""


def make_split(image_ids: Sequence[str], is_positive: Sequence[bool], val_fraction: float, seed: int) -> Split:
    """{"train": ids, "val": ids}, each sorted; stratified so both splits keep the positive fraction."""
    from sklearn.model_selection import train_test_split  # here: importing sklearn costs every start 0.7 s

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


def make_folds(
    image_ids: Sequence[str], presence: Sequence[Sequence[bool]], groups: Sequence[str], num_folds: int, seed: int
) -> list[Split]:
    """K folds of ``image_ids`` (see the module docstring), each list sorted.

    presence: per image, one flag per foreground class (single-label binary: ``(is_positive,)``). groups: one group
    per image (a patient); a group's images share a fold.

    The placement minimises, in this order: the sum over classes of the **spread** of the class's count (images with
    it) over the folds' validation sets (max − min; for pneumothorax, the positives), the spread of the fold sizes
    (images), then the squared deviations of both from their means (a tie-break that levels the folds which do not
    set the spread). Start: groups largest first (ties in a seeded random order), each to the fold that needs its
    classes most. Then a local search moves one group to another fold, or swaps two groups of different content
    between two folds, taking the best improving step until none improves. Groups with the same content (image
    count, count per class) are interchangeable, so the search runs over the few distinct contents, not the ~10k
    patients of SIIM; which group of a content moves is drawn in a seeded order. Every fold keeps at least one image.
    On small random grouped designs this reaches the exhaustive optimum (``tests/data/test_folds.py``).

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
    classes = np.asarray(presence, dtype=np.int64).reshape(len(image_ids), -1)
    rng = np.random.default_rng(seed)
    names = list(members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the random order
    # content of a group: [count per class..., images]
    content = {g: (*classes[members[g]].sum(0).tolist(), len(members[g])) for g in order}
    kinds = sorted(set(content.values()))
    kind_of = {c: t for t, c in enumerate(kinds)}
    vectors = np.array(kinds, dtype=np.int64)  # [T, C + 1]
    share = vectors[:, :-1] / np.maximum(classes.sum(0), 1)
    load = np.zeros((num_folds, vectors.shape[1]), dtype=np.int64)
    class_load = np.zeros((num_folds, share.shape[1]))
    placed: list[list[list[str]]] = [[[] for _ in kinds] for _ in range(num_folds)]  # [fold][kind] → groups
    for group in order:
        kind = kind_of[content[group]]
        keys = (rng.permutation(num_folds), load[:, -1], class_load @ share[kind])
        fold = int(np.lexsort(keys)[0])  # the last key is the primary one
        load[fold] += vectors[kind]
        class_load[fold] += share[kind]
        placed[fold][kind].append(group)
    _improve_placement(load, vectors, placed)
    # Seeded random starts (a local search can stop short of the best placement), where the contents are few enough
    # for the search to be quick: with many class combinations (multi-label data) the greedy start alone.
    for _ in range(RESTARTS if len(kinds) <= MAX_KINDS_FOR_RESTARTS else 0):
        start = rng.integers(num_folds, size=len(order))
        start[rng.permutation(len(order))[:num_folds]] = np.arange(num_folds)  # no fold empty
        other_load = np.zeros_like(load)
        other: list[list[list[str]]] = [[[] for _ in kinds] for _ in range(num_folds)]
        for group, fold in zip(order, start):
            other_load[fold] += vectors[kind_of[content[group]]]
            other[fold][kind_of[content[group]]].append(group)
        _improve_placement(other_load, vectors, other)
        if placement_cost(other_load) < placement_cost(load):
            load, placed = other_load, other
    fold_of_group = {g: fold for fold, lists in enumerate(placed) for gs in lists for g in gs}
    fold_of_image = [fold_of_group[g] for g in groups]
    return [
        {
            "train": sorted(i for i, f in zip(image_ids, fold_of_image) if f != fold),
            "val": sorted(i for i, f in zip(image_ids, fold_of_image) if f == fold),
        }
        for fold in range(num_folds)
    ]


RESTARTS = 8
"""Seeded random starting placements that :func:`make_folds` searches from besides the greedy one."""
MAX_KINDS_FOR_RESTARTS = 64
"""Above this many distinct group contents, :func:`make_folds` searches from the greedy start only."""


def placement_cost(load: np.ndarray) -> tuple[float, ...]:
    """What :func:`make_folds` minimises, compared in order. load: int [K, C + 1], per fold the count of each class
    then the number of images. (sum of class spreads, size spread, class squared deviations, size squared
    deviations); spread = max − min over folds."""
    return tuple(_costs(load[None])[0].tolist())


def _costs(loads: np.ndarray) -> np.ndarray:
    """[N, 4] costs of N placements' loads [N, K, C + 1] (see :func:`placement_cost`)."""
    spread = loads.max(1) - loads.min(1)
    squares = ((loads - loads.mean(1, keepdims=True)) ** 2).sum(1)
    return np.stack([spread[:, :-1].sum(1), spread[:, -1], squares[:, :-1].sum(1), squares[:, -1]], axis=1).astype(
        np.float64
    )


def _improve_placement(load: np.ndarray, vectors: np.ndarray, placed: list[list[list[str]]]) -> None:
    """Local search on ``load`` [K, C + 1] and ``placed`` [fold][kind] (groups), in place: repeatedly take the step
    with the lowest :func:`placement_cost` — move one group of a kind from fold a to fold b, or swap a group of kind
    t in a with one of kind u in b — while it lowers the cost. Ties go to the first step in a fixed order."""
    num_folds, num_kinds = len(placed), len(vectors)
    # step s carries delta[s] from fold a to fold b: a move of kind t (delta = vectors[t]), or a swap of t in a for
    # u in b (delta = vectors[t] - vectors[u], t != u, contents differ)
    out_kind = np.concatenate([np.arange(num_kinds), np.repeat(np.arange(num_kinds), num_kinds)])
    in_kind = np.concatenate([np.full(num_kinds, -1), np.tile(np.arange(num_kinds), num_kinds)])
    keep = out_kind != in_kind
    out_kind, in_kind = out_kind[keep], in_kind[keep]
    delta = vectors[out_kind] - np.where(in_kind[:, None] >= 0, vectors[np.maximum(in_kind, 0)], 0)
    pairs = [(a, b) for a in range(num_folds) for b in range(num_folds) if a != b]
    current = _costs(load[None])[0]
    while True:
        best = None
        for a, b in pairs:
            count_a = np.array([len(gs) for gs in placed[a]])
            count_b = np.array([len(gs) for gs in placed[b]])
            possible = (count_a[out_kind] > 0) & ((in_kind < 0) | (count_b[np.maximum(in_kind, 0)] > 0))
            steps = np.flatnonzero(possible)
            if not len(steps):
                continue
            loads = np.repeat(load[None], len(steps), axis=0)
            loads[:, a] -= delta[steps]
            loads[:, b] += delta[steps]
            steps = steps[loads[:, a, -1] > 0]  # a fold keeps at least one image
            loads = loads[loads[:, a, -1] > 0]
            if not len(steps):
                continue
            costs = _costs(loads)
            i = int(np.lexsort(costs.T[::-1])[0])
            if best is None or tuple(costs[i]) < best[0]:
                best = (tuple(costs[i]), a, b, int(steps[i]))
        if best is None or best[0] >= tuple(current):
            return
        current, (_, a, b, step) = np.array(best[0]), best
        load[a] -= delta[step]
        load[b] += delta[step]
        placed[b][out_kind[step]].append(placed[a][out_kind[step]].pop())
        if in_kind[step] >= 0:
            placed[a][in_kind[step]].append(placed[b][in_kind[step]].pop())


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
