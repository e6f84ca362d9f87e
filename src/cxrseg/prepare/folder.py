"""A user's own images + masks → the PNG layout (``cxrseg prepare folder``).

Images (PNG, JPEG, TIFF, BMP, GIF, DICOM) are read by :func:`cxrseg.imageio.images.read_image` (palette through its
palette, colour to luma, 16-bit and DICOM to 8-bit gray, MONOCHROME1 inverted) and masks (PNG, GIF, TIFF, BMP) by
:func:`cxrseg.imageio.images.read_mask`; what each file needed is reported in ``metadata.csv``'s ``converted``
column and counted in the summary. Images and masks are matched by file name without suffix (a mask's name may
add ``mask_suffix``, e.g. ``_mask``), which becomes the ImageId; both folders are searched recursively. The label set
comes from ``--labels`` (a JSON file like the layout's ``labels.json``: ``{"task": "custom", "names":
["background", "lesion"], "multilabel": false}``; ``task`` ``pneumothorax``/``chestxdet`` name the built-in sets)
and is pneumothorax when absent. Masks must be:

* two-class single-label (binary): values within {0, 1} or within {0, 255}; written as 0/255;
* single-label with K > 2 classes: class indices 0..K-1; written as they are;
* multi-label: bit fields as written by :func:`cxrseg.labels.pack_multilabel` (bit c = class c), 8- or 16-bit.

Bad pairs are handled as in ``prepare siim``: missing mask, mask without image, size mismatch, unreadable file,
mask values outside the label set or repeated ImageIds are left out and reported in ``problems.csv``
(``--strict``: an error, nothing written). Resizing (optional ``image_size``): images by area, binary masks and
multi-label planes by :func:`cxrseg.prepare.resize.resize_mask`, K-class masks by nearest neighbour
(:func:`~cxrseg.prepare.resize.resize_class_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrseg.data.groups import PATIENT_COLUMN
from cxrseg.errors import DataError, PrepareError
from cxrseg.imageio.images import DICOM_SUFFIXES, MASK_SUFFIXES, read_image_converted, read_mask, write_png
from cxrseg.labels import PNEUMOTHORAX, LabelSet, pack_multilabel, unpack_multilabel
from cxrseg.prepare.patients import match_patient_ids
from cxrseg.prepare.problems import IMAGE_SKIPPED, ItemResult, Problem, Summary, check_image_id
from cxrseg.prepare.resize import resize_class_indices, resize_image, resize_mask
from cxrseg.prepare.writer import PrepareOptions, Source, write_layout

METADATA_COLUMNS = ("image_id", "split", "is_positive", "source", "height", "width", PATIENT_COLUMN, "converted")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", *DICOM_SUFFIXES)


@dataclass(frozen=True)
class FolderItem:
    image_id: str
    split: str
    image_path: str
    mask_path: str
    labels: LabelSet
    image_size: int | None
    patient_id: str = ""


def prepare_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    options: PrepareOptions,
    *,
    labels_file: str | Path | None = None,
    split: str = "train",
    patient_ids: str | Path | None = None,
    mask_suffix: str = "",
) -> Summary:
    """Convert image/mask folders into split ``split`` of the PNG layout at ``options.out`` (see the module
    docstring). labels_file: a labels JSON (:meth:`cxrseg.labels.LabelSet.load`); pneumothorax when None.
    patient_ids: a CSV with columns ``image_id`` and ``PatientID`` (:func:`cxrseg.data.groups.read_patient_ids`),
    copied into ``metadata.csv`` so that cross-validation folds keep a patient's images together; matched with
    or without file suffixes, mismatches in ``problems.csv`` (:func:`cxrseg.prepare.patients.match_patient_ids`).
    mask_suffix: what the masks' file names add to their image's name without suffix (Shenzhen's
    ``CHNCXR_0001_0_mask.png``: ``"_mask"``); a mask whose name lacks it is matched by its whole name."""
    check_image_id(split, "--split")
    labels = LabelSet.load(labels_file) if labels_file else PNEUMOTHORAX
    images, problems = _find(images_dir, IMAGE_SUFFIXES, split, "image")
    masks, mask_problems = _find(masks_dir, MASK_SUFFIXES, split, "mask", strip=mask_suffix)
    problems += mask_problems
    patients: dict[str, str] = {}
    if patient_ids is not None:
        patients, patient_problems = match_patient_ids(patient_ids, {image_id: split for image_id in images})
        problems += patient_problems
    items = []
    for image_id, path in images.items():
        if image_id in masks:
            patient = patients.get(image_id, "")
            items.append(
                FolderItem(image_id, split, str(path), str(masks[image_id]), labels, options.image_size, patient)
            )
        else:
            detail = f"{path}: no {image_id}{mask_suffix}{{{','.join(MASK_SUFFIXES)}}} under {masks_dir}"
            problems.append(Problem(image_id, split, "missing_mask", IMAGE_SKIPPED, detail))
    for image_id in sorted(masks.keys() - images.keys()):
        detail = f"{masks[image_id]}: no image {image_id}{{{','.join(IMAGE_SUFFIXES)}}} under {images_dir}"
        problems.append(Problem(image_id, split, "missing_image", IMAGE_SKIPPED, detail))
    source = Source("folder", labels, METADATA_COLUMNS, convert_folder_item)
    return write_layout(
        options, source, items, splits=[split], inputs=(images_dir, masks_dir, labels_file), problems=problems
    )


def convert_folder_item(item: FolderItem, root: Path) -> ItemResult:
    """Validate one image/mask pair, resize it and write both PNGs under ``root``."""

    def skip(reason: str, detail: str) -> ItemResult:
        return ItemResult(None, [Problem(item.image_id, item.split, reason, IMAGE_SKIPPED, detail)])

    try:
        image, image_conversion = read_image_converted(item.image_path)
    except DataError as error:
        return skip("unreadable_image", str(error))
    try:
        mask, mask_conversion = read_mask(item.mask_path)
    except DataError as error:
        return skip("unreadable_mask", str(error))
    if mask.shape != image.shape:
        return skip("size_mismatch", f"{item.mask_path}: mask {mask.shape[::-1]} but image {image.shape[::-1]} (WxH).")

    labels, values = item.labels, np.unique(mask)
    if labels.multilabel:
        allowed = f"bit fields of {labels.num_labels} classes (values < {2**labels.num_labels})"
        valid = int(values.max()) < 2**labels.num_labels
    elif labels.num_labels == 2:
        allowed = "{0, 1} or {0, 255}"
        valid = set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}
    else:
        allowed = f"class indices 0..{labels.num_labels - 1}"
        valid = int(values.max()) < labels.num_labels
    if not valid:
        shown = values.tolist()[:10]
        return skip("mask_values", f"{item.mask_path}: values {shown} are outside the label set ({allowed}).")

    if labels.multilabel:
        planes = unpack_multilabel(mask, labels.num_labels).transpose(2, 0, 1)
        stored = pack_multilabel(np.stack([resize_mask(plane, item.image_size) for plane in planes]))
    elif labels.num_labels == 2:
        stored = resize_mask(mask, item.image_size) * np.uint8(255)
    else:
        stored = resize_class_indices(mask.astype(np.uint8), item.image_size)
    converted = [f"image: {image_conversion}"] if image_conversion else []
    converted += [f"mask: {mask_conversion}"] if mask_conversion else []
    if labels.num_labels == 2 and not labels.multilabel and values.max() == 1:
        converted.append("mask: 0/1 → 0/255")
    name = f"{item.image_id}.png"
    write_png(root / "images" / item.split / name, resize_image(image, item.image_size))
    write_png(root / "masks" / item.split / name, stored)
    height, width = image.shape
    row = {
        "image_id": item.image_id,
        "split": item.split,
        "is_positive": bool(stored.any()),
        "source": item.image_path,
        "height": height,
        "width": width,
        PATIENT_COLUMN: item.patient_id,
        "converted": "; ".join(converted),
    }
    return ItemResult(row)


def _find(
    folder: str | Path, suffixes: tuple[str, ...], split: str, kind: str, strip: str = ""
) -> tuple[dict[str, Path], list[Problem]]:
    """The files of ``kind`` under ``folder`` by ImageId: the file name without its suffix, and without ``strip``
    where it ends with it; a second file with the same ImageId is a problem (the first is kept)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"{kind.capitalize()} folder {folder} does not exist.")
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        image_id = path.stem.removesuffix(strip) if strip and path.stem != strip else path.stem
        if image_id in found:
            detail = f"{path} has the same name as {found[image_id]} (kept)"
            problems.append(Problem(image_id, split, f"duplicate_{kind}", IMAGE_SKIPPED, detail))
        else:
            found[image_id] = path
    return found, problems
