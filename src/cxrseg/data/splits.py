"""The train/validation split: made once, seeded, stratified by positivity, saved as ``splits.json`` (nnU-Net
style) and reused when present. Validation keeps the natural prevalence; undersampling is only the sampler's job."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sklearn.model_selection import train_test_split

from cxrseg.errors import DataError
from cxrseg.files import atomic_write_text


def make_split(
    image_ids: Sequence[str], is_positive: Sequence[bool], val_fraction: float, seed: int
) -> dict[str, list[str]]:
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


def load_or_make_split(
    path: str | os.PathLike, image_ids: Sequence[str], is_positive: Sequence[bool], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """The split saved at ``path`` if it exists (every id must be in ``image_ids``), else a new one, which the
    caller saves (:func:`save_split`) once everything the run needs has been checked."""
    path = Path(path)
    if path.exists():
        split = json.loads(path.read_text())
        known = set(image_ids)
        for name in ("train", "val"):
            if not split.get(name):
                raise DataError(f"{path}: split {name!r} is missing or empty.")
            unknown = [i for i in split[name] if i not in known]
            if unknown:
                raise DataError(f"{path}: {len(unknown)} {name} ids are not in the data (first: {unknown[0]!r}).")
        return {"train": split["train"], "val": split["val"]}
    return make_split(image_ids, is_positive, val_fraction, seed)


def save_split(path: str | os.PathLike, split: dict[str, list[str]]) -> None:
    """Write ``split`` as ``splits.json`` at ``path`` (atomically)."""
    atomic_write_text(path, json.dumps(split, indent=1))
