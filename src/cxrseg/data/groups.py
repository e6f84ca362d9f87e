"""Which images belong to one patient, so that cross-validation folds never split a patient.

An image's patient, in this order:

1. the ``PatientID`` column of the layout's ``metadata.csv`` (``cxrseg prepare siim`` copies it from the DICOMs;
   ``prepare folder`` and ``prepare chestxdet`` take it from ``--patient-ids CSV``), when the row has one;
2. an NIH ChestX-ray14 file name ``<patient>_<visit>`` (``00000001_000`` → patient ``00000001``);
3. none known: the image is its own group.

ChestX-Det renamed its NIH images to plain numbers (``36204.png``), so without ``--patient-ids`` its folds are per
image and one patient's images may fall in different folds.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cxrseg.constants import METADATA_FILENAME
from cxrseg.errors import DataError

PATIENT_COLUMN = "PatientID"
"""The patient column of ``metadata.csv`` and of a ``--patient-ids`` CSV (with ``image_id``)."""

NIH_FILE_NAME = re.compile(r"^(\d{8})_\d{3}$")
"""NIH ChestX-ray14 image ids: 8-digit patient, underscore, 3-digit follow-up number."""


def read_patient_ids(path: str | os.PathLike) -> dict[str, str]:
    """``{image_id: patient id}`` from a CSV with columns ``image_id`` and ``PatientID`` (others ignored; rows with
    an empty PatientID left out). Raises :class:`~cxrseg.errors.DataError` naming the file and the row for a
    missing column or an image given two different patients."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if "image_id" not in columns or PATIENT_COLUMN not in columns:
                raise DataError(f"{path}: needs the columns image_id and {PATIENT_COLUMN}; it has {columns}.")
            patients: dict[str, str] = {}
            for row_number, row in enumerate(reader, start=2):
                image_id, patient = row["image_id"], (row[PATIENT_COLUMN] or "").strip()
                if not patient:
                    continue
                if patients.get(image_id, patient) != patient:
                    raise DataError(
                        f"{path}, row {row_number}: image {image_id!r} has patient {patient!r} but an earlier row "
                        f"gives {patients[image_id]!r}."
                    )
                patients[image_id] = patient
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the patient CSV ({error}).") from error
    return patients


def patient_groups(metadata_dir: str | os.PathLike, image_ids: Sequence[str]) -> tuple[list[str], str]:
    """One group name per image of ``image_ids`` (see the module docstring) and a sentence saying where the groups
    came from. metadata_dir: the folder that may hold ``metadata.csv`` (the layout root)."""
    metadata = Path(metadata_dir) / METADATA_FILENAME
    known = read_patient_ids(metadata) if metadata.is_file() and _has_patient_column(metadata) else {}
    groups, sources = [], {"metadata": 0, "nih": 0, "none": 0}
    for image_id in image_ids:
        nih = NIH_FILE_NAME.match(image_id)
        if image_id in known:
            groups.append(f"patient:{known[image_id]}")
            sources["metadata"] += 1
        elif nih:
            groups.append(f"patient:{nih.group(1)}")
            sources["nih"] += 1
        else:
            groups.append(f"image:{image_id}")
            sources["none"] += 1
    parts = []
    if sources["metadata"]:
        parts.append(f"{sources['metadata']} images by {metadata} {PATIENT_COLUMN}")
    if sources["nih"]:
        parts.append(f"{sources['nih']} by NIH ChestX-ray14 file names")
    if sources["none"]:
        parts.append(f"{sources['none']} without a known patient (each its own group)")
    num_patients = len({g for g in groups if g.startswith("patient:")})
    return groups, f"{num_patients} patients: " + ", ".join(parts)


def _has_patient_column(path: Path) -> bool:
    with path.open(newline="") as handle:
        return PATIENT_COLUMN in (csv.DictReader(handle).fieldnames or [])
