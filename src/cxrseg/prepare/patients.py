"""Matching a ``--patient-ids`` CSV (``image_id``, ``PatientID``) to the images a prepare run finds, with every
mismatch counted: the CSV's ``image_id`` may be the image's id (its file name without suffix) or its file name
(``36204.png``); rows that name no image and images that no row names become ``problems.csv`` rows (the image is
kept, as its own patient group); a CSV that matches no image at all is an error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePath

from cxrseg.data.groups import read_patient_ids
from cxrseg.errors import PrepareError
from cxrseg.prepare.problems import Problem

UNMATCHED_ROW = "patient_row_unmatched"
"""``problems.csv`` reason of a CSV row whose image_id names no image of the run (action: row ignored)."""
NO_PATIENT = "no_patient_id"
"""``problems.csv`` reason of an image that no CSV row names (action: image kept as its own patient group)."""


def match_patient_ids(path: str | os.PathLike, images: Mapping[str, str]) -> tuple[dict[str, str], list[Problem]]:
    """``({image_id: patient id}, problems)`` for the images of a run. images: ``{image_id: split}`` of every
    image the run found. A CSV id matches an image when it equals the image id, or does once its last suffix
    (``.png``, ``.dcm``, ...) is removed. Raises :class:`~cxrseg.errors.PrepareError` naming the CSV when no row
    matches, or when two rows that match one image (``a`` and ``a.png``) give different patients."""
    rows = read_patient_ids(path)
    patients: dict[str, str] = {}
    matched_by: dict[str, str] = {}
    problems = []
    for csv_id, patient in rows.items():
        image_id = csv_id if csv_id in images else PurePath(csv_id).stem if PurePath(csv_id).suffix else None
        if image_id is None or image_id not in images:
            detail = f"{path}: image_id {csv_id!r} is no image of this run"
            problems.append(Problem(csv_id, "", UNMATCHED_ROW, "row ignored", detail))
            continue
        if patients.get(image_id, patient) != patient:
            raise PrepareError(
                f"{path}: rows {matched_by[image_id]!r} and {csv_id!r} both name image {image_id!r} but give the "
                f"patients {patients[image_id]!r} and {patient!r}; keep one."
            )
        patients[image_id], matched_by[image_id] = patient, csv_id
    if not patients:
        example = next(iter(images), "none found")
        raise PrepareError(
            f"{path}: none of its {len(rows)} image_ids names an image of this run (first: "
            f"{next(iter(rows), 'no rows')!r}; an image id here: {example!r}); image_id must be the image's file "
            "name, with or without its suffix."
        )
    for image_id, split in images.items():
        if image_id not in patients:
            detail = f"no row of {path} names it: the image is its own patient group"
            problems.append(Problem(image_id, split, NO_PATIENT, "image kept", detail))
    return patients, problems
