"""SIIM-ACR pneumothorax: DICOMs + RLE CSV → the PNG layout (``cxrseg prepare siim``).

Input as downloaded from Kaggle: DICOMs nested as ``<study>/<series>/<ImageId>.dcm`` (found recursively; the
ImageId is the file name without ``.dcm``) and the RLE CSV, stage 1 ``train-rle.csv`` or stage 2
``stage_2_train.csv``. Output: ``OUT/images/train/<ImageId>.png`` (uint8 gray), ``OUT/masks/train/<ImageId>.png``
(uint8 0/255, the union of the image's RLE rows), ``OUT/images/test/<ImageId>.png`` for ``test_dicom_dir`` (no
masks), ``metadata.csv`` (PatientID, PatientSex, PatientAge, ViewPosition, source size), ``problems.csv`` and
``labels.json`` (pneumothorax). Resizing: :func:`cxrseg.prepare.resize.resize_image` / ``resize_mask``.

Matching: a train DICOM without a CSV row is unlabelled (not negative) and a CSV row without a DICOM cannot be
used; both are left out and reported in ``problems.csv`` (``--strict``: an error). If the same ImageId appears in
more than one DICOM file, the first (train before test, then path order) is used and the others are reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrseg.errors import PrepareError
from cxrseg.imageio.dicom import METADATA_FIELDS, DicomError, read_dicom_with_metadata
from cxrseg.imageio.images import write_png
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.prepare.problems import IMAGE_SKIPPED, ItemResult, Problem, Summary, check_image_id
from cxrseg.prepare.resize import resize_image, resize_mask
from cxrseg.prepare.rle import RLEError, read_rle_csv, rle_decode_union
from cxrseg.prepare.writer import PrepareOptions, Source, write_layout

METADATA_COLUMNS = ("image_id", "split", "is_positive", "source", *METADATA_FIELDS)


@dataclass(frozen=True)
class SiimItem:
    """One DICOM to convert. rles: its ``EncodedPixels`` rows, None for an unlabelled (test) image."""

    image_id: str
    split: str
    dicom_path: str
    rles: tuple[str, ...] | None
    image_size: int | None


def find_dicoms(folder: str | Path, split: str) -> tuple[dict[str, Path], list[Problem]]:
    """``{ImageId: path}`` of every ``*.dcm`` under ``folder`` (recursive, case-insensitive suffix, sorted), and the
    problems: file names that are not usable ImageIds, and repeated ImageIds (the first path is kept)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"DICOM folder {folder} does not exist.")
    found: dict[str, Path] = {}
    problems = []
    paths = sorted(
        Path(base) / name for base, _, names in os.walk(folder) for name in names if name.lower().endswith(".dcm")
    )
    for path in paths:
        image_id = path.name[: -len(".dcm")]
        try:
            check_image_id(image_id, str(path))
        except PrepareError as error:
            problems.append(Problem(image_id, split, "invalid_image_id", IMAGE_SKIPPED, str(error)))
            continue
        if image_id in found:
            problems.append(
                Problem(image_id, split, "duplicate_dicom", IMAGE_SKIPPED, f"{path} (kept {found[image_id]})")
            )
            continue
        found[image_id] = path
    return found, problems


def prepare_siim(
    dicom_dir: str | Path, rle_csv: str | Path, options: PrepareOptions, *, test_dicom_dir: str | Path | None = None
) -> Summary:
    """Convert the SIIM-ACR download to the PNG layout at ``options.out`` (see the module docstring).

    Returns the run's :class:`~cxrseg.prepare.problems.Summary`; raises :class:`~cxrseg.errors.PrepareError` for
    unusable input or, with ``options.strict``, any problem.
    """
    rle_csv = Path(rle_csv)
    rows = read_rle_csv(rle_csv)
    for image_id in rows:
        check_image_id(image_id, f"{rle_csv}, ImageId {image_id!r}")

    train, problems = find_dicoms(dicom_dir, "train")
    items = []
    for image_id, path in train.items():
        if image_id in rows:
            items.append(SiimItem(image_id, "train", str(path), tuple(rows[image_id]), options.image_size))
        else:
            detail = f"{path} has no row in {rle_csv.name}: unlabelled, not negative"
            problems.append(Problem(image_id, "train", "unlabelled", IMAGE_SKIPPED, detail))
    for image_id in rows.keys() - train.keys():
        detail = f"{rle_csv.name} has a row but {dicom_dir} holds no {image_id}.dcm"
        problems.append(Problem(image_id, "train", "missing_dicom", IMAGE_SKIPPED, detail))

    splits = ["train"]
    if test_dicom_dir is not None:
        splits.append("test")
        test, test_problems = find_dicoms(test_dicom_dir, "test")
        problems.extend(test_problems)
        for image_id, path in test.items():
            if image_id in train:
                detail = f"{path} has the ImageId of {train[image_id]} (kept as train)"
                problems.append(Problem(image_id, "test", "duplicate_dicom", IMAGE_SKIPPED, detail))
            else:
                items.append(SiimItem(image_id, "test", str(path), None, options.image_size))

    source = Source("siim", PNEUMOTHORAX, METADATA_COLUMNS, convert_siim_item)
    return write_layout(
        options, source, items, splits=splits, inputs=(dicom_dir, rle_csv, test_dicom_dir), problems=problems
    )


def convert_siim_item(item: SiimItem, root: Path) -> ItemResult:
    """Read, decode and resize one DICOM (and its mask) and write its PNGs under ``root``."""
    try:
        pixels, metadata = read_dicom_with_metadata(item.dicom_path)
    except DicomError as error:
        return ItemResult(None, [Problem(item.image_id, item.split, "unreadable_dicom", IMAGE_SKIPPED, str(error))])
    mask = None
    if item.rles is not None:
        height, width = pixels.shape
        try:
            mask = rle_decode_union(item.rles, height, width, context=f"ImageId {item.image_id}")
        except RLEError as error:
            return ItemResult(None, [Problem(item.image_id, item.split, "bad_rle", IMAGE_SKIPPED, str(error))])
    name = f"{item.image_id}.png"
    write_png(root / "images" / item.split / name, resize_image(pixels, item.image_size))
    if mask is not None:
        write_png(root / "masks" / item.split / name, resize_mask(mask, item.image_size) * np.uint8(255))
    row = {
        "image_id": item.image_id,
        "split": item.split,
        "is_positive": "" if mask is None else bool(mask.any()),
        "source": item.dicom_path,
        **metadata,
    }
    return ItemResult(row)
