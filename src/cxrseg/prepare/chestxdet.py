"""ChestX-Det: PNG images + the official JSON → the multi-label PNG layout (``cxrseg prepare chestxdet``).

The official annotation files (``ChestX_Det_train.json``: 3,025 images, ``ChestX_Det_test.json``: 553) are lists
of records ``{"file_name": "36199.png", "syms": ["Effusion", ...], "boxes": [[x1, y1, x2, y2], ...],
"polygons": [[[x, y], ...], ...]}`` with one polygon per finding in ``syms``. Boxes are not used.

Split: an annotation file whose name contains "test" gives split ``test``, one containing "train" gives ``train``;
otherwise the order decides (first file train, second test). Each polygon is rasterised (``cv2.fillPoly``, pixel
centres at integer coordinates) into the plane of its class, in :data:`cxrseg.labels.CHESTXDET_CLASSES` order;
regions of different classes overlap, so the mask is written with :func:`cxrseg.labels.pack_multilabel` as a
16-bit PNG (bit c = class c). Each plane is resized with
:func:`cxrseg.prepare.resize.resize_mask` (small findings are kept).

Reported in ``problems.csv`` (image kept unless said otherwise): unknown class names (region dropped), polygons
partly outside the image (clipped), polygons wholly outside or with fewer than 3 points (region dropped), records
whose ``syms`` and ``polygons`` differ in length or whose image is missing/unreadable (image skipped), repeated
file names (later record skipped) and images in the folder without a record (image skipped), records whose
``file_name``, ``syms`` or ``polygons`` is missing, null or of the wrong type (``malformed_record``, record skipped)
and polygons that are neither ``[[x, y], ...]`` nor COCO-style flat coordinates (``malformed_polygon``, region
dropped). COCO-style flat polygons (``[x, y, x, y, ...]``, or a list of them for a region in parts) are converted.
An annotation file may be gzipped (``.json.gz``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrseg.data.groups import PATIENT_COLUMN
from cxrseg.errors import DataError, PrepareError
from cxrseg.imageio.images import read_image, write_png
from cxrseg.labels import CHESTXDET, CHESTXDET_CLASSES, pack_multilabel
from cxrseg.prepare.patients import match_patient_ids
from cxrseg.prepare.problems import IMAGE_SKIPPED, ItemResult, Problem, Summary, check_image_id
from cxrseg.prepare.resize import resize_image, resize_mask
from cxrseg.prepare.writer import PrepareOptions, Source, write_layout

METADATA_COLUMNS = ("image_id", "split", "is_positive", "findings", "source", "height", "width", PATIENT_COLUMN)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ChestXDetItem:
    """One annotated image: ``regions`` are (class name, polygon [[x, y], ...]) pairs from its record."""

    image_id: str
    split: str
    image_path: str
    regions: tuple[tuple[str, tuple[tuple[float, float], ...]], ...]
    image_size: int | None
    patient_id: str = ""


def split_of_annotation_file(path: str | Path, position: int) -> str:
    """``test`` if the file name contains "test", ``train`` if it contains "train", else by position (0 → train,
    1 → test)."""
    name = Path(path).name.lower()
    if "test" in name:
        return "test"
    if "train" in name:
        return "train"
    if position > 1:
        raise PrepareError(f"{path}: cannot tell its split (name has neither 'train' nor 'test', and it is file #3+).")
    return ("train", "test")[position]


def prepare_chestxdet(
    images_dir: str | Path,
    annotations: list[str | Path],
    options: PrepareOptions,
    *,
    patient_ids: str | Path | None = None,
) -> Summary:
    """Convert ChestX-Det to the multi-label PNG layout at ``options.out`` (see the module docstring).

    images_dir: folder holding the images named by ``file_name`` (searched recursively, so ``train/`` and
    ``test/`` subfolders work). patient_ids: a CSV with columns ``image_id`` and ``PatientID``
    (:func:`cxrseg.data.groups.read_patient_ids`), copied into ``metadata.csv`` so that cross-validation folds keep
    a patient's images together (matched with or without file suffixes, mismatches in ``problems.csv``:
    :func:`cxrseg.prepare.patients.match_patient_ids`); ChestX-Det's own file names carry no patient id.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise PrepareError(f"Image folder {images_dir} does not exist.")
    if not annotations:
        raise PrepareError("Give at least one --annotations file.")
    on_disk: dict[str, Path] = {}
    for path in sorted(images_dir.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            on_disk.setdefault(path.name, path)

    items: list[ChestXDetItem] = []
    problems: list[Problem] = []
    used: dict[str, str] = {}
    splits: list[str] = []
    for position, annotation_path in enumerate(annotations):
        split = split_of_annotation_file(annotation_path, position)
        if split not in splits:
            splits.append(split)
        for index, record in enumerate(_load_records(annotation_path)):
            where = f"{annotation_path}, record {index}"
            try:
                file_name, syms, polygons = _record_fields(record)
            except MalformedRecord as error:  # its image (when the record names one) is reported here, once
                named = record["file_name"] if isinstance(record["file_name"], str) else None
                image_id = Path(named).stem if named else f"record {index}"
                if named:
                    used.setdefault(image_id, str(annotation_path))
                detail = f"{where}: {error}"
                problems.append(Problem(image_id, split, "malformed_record", IMAGE_SKIPPED, detail))
                continue
            file_name = check_image_id(file_name, where)
            image_id = Path(file_name).stem
            if image_id in used:
                detail = f"{where}: {file_name} already annotated in {used[image_id]}"
                problems.append(Problem(image_id, split, "duplicate_record", IMAGE_SKIPPED, detail))
                continue
            used[image_id] = str(annotation_path)
            if file_name not in on_disk:
                detail = f"{where}: no {file_name} under {images_dir}"
                problems.append(Problem(image_id, split, "missing_image", IMAGE_SKIPPED, detail))
                continue
            if len(syms) != len(polygons):
                detail = f"{where}: {len(syms)} syms but {len(polygons)} polygons"
                problems.append(Problem(image_id, split, "syms_polygons_mismatch", IMAGE_SKIPPED, detail))
                continue
            regions = []
            for number, (name, polygon) in enumerate(zip(syms, polygons)):
                try:
                    regions.extend((name, points) for points in polygon_points(polygon))
                except MalformedRecord as error:
                    detail = f"{where}: region {number} ({name}): {error}"
                    problems.append(Problem(image_id, split, "malformed_polygon", "region dropped", detail))
            items.append(ChestXDetItem(image_id, split, str(on_disk[file_name]), tuple(regions), options.image_size))
    for file_name, path in on_disk.items():
        if Path(file_name).stem not in used:
            problems.append(Problem(Path(file_name).stem, "", "unannotated_image", IMAGE_SKIPPED, str(path)))

    if patient_ids is not None:
        patients, patient_problems = match_patient_ids(patient_ids, {item.image_id: item.split for item in items})
        problems += patient_problems
        items = [dataclasses.replace(item, patient_id=patients.get(item.image_id, "")) for item in items]
    source = Source("chestxdet", CHESTXDET, METADATA_COLUMNS, convert_chestxdet_item)
    return write_layout(options, source, items, splits=splits, inputs=(images_dir, *annotations), problems=problems)


def rasterize_regions(
    regions: tuple[tuple[str, tuple[tuple[float, float], ...]], ...], height: int, width: int
) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """Polygons → uint8 0/1 planes ``[13, height, width]`` in CHESTXDET_CLASSES order, and the problems as
    (reason, action, detail) tuples. Coordinates are pixel units, rounded to the nearest pixel centre."""
    planes = np.zeros((len(CHESTXDET_CLASSES), height, width), dtype=np.uint8)
    class_index = {name: index for index, name in enumerate(CHESTXDET_CLASSES)}
    problems = []
    for number, (name, polygon) in enumerate(regions):
        label = f"region {number} ({name})"
        if name not in class_index:
            problems.append(("unknown_class", "region dropped", f"{label}: not one of CHESTXDET_CLASSES"))
            continue
        points = np.rint(np.asarray(polygon, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
        if len(points) < 3:
            problems.append(("degenerate_polygon", "region dropped", f"{label}: {len(points)} points"))
            continue
        inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
        x_low, y_low = points.min(axis=0)
        x_high, y_high = points.max(axis=0)
        if x_high < 0 or y_high < 0 or x_low >= width or y_low >= height:
            detail = f"{label}: bounding box ({x_low}, {y_low})-({x_high}, {y_high}) outside {width}x{height}"
            problems.append(("polygon_outside_image", "region dropped", detail))
            continue
        if not inside.all():
            detail = f"{label}: {int((~inside).sum())} of {len(points)} points outside {width}x{height}"
            problems.append(("polygon_clipped", "region clipped", detail))
        cv2.fillPoly(planes[class_index[name]], [points], 1)  # fillPoly clips to the image
    return planes, problems


def convert_chestxdet_item(item: ChestXDetItem, root: Path) -> ItemResult:
    """Read one image, rasterise and resize its regions, and write image and 16-bit mask PNGs under ``root``."""
    try:
        image = read_image(item.image_path)
    except DataError as error:
        return ItemResult(None, [Problem(item.image_id, item.split, "unreadable_image", IMAGE_SKIPPED, str(error))])
    height, width = image.shape
    planes, found = rasterize_regions(item.regions, height, width)
    problems = [Problem(item.image_id, item.split, reason, action, detail) for reason, action, detail in found]
    resized = np.stack([resize_mask(plane, item.image_size) for plane in planes])
    name = f"{item.image_id}.png"
    write_png(root / "images" / item.split / name, resize_image(image, item.image_size))
    write_png(root / "masks" / item.split / name, pack_multilabel(resized))
    findings = [CHESTXDET_CLASSES[c] for c in range(len(CHESTXDET_CLASSES)) if resized[c].any()]
    row = {
        "image_id": item.image_id,
        "split": item.split,
        "is_positive": bool(findings),
        "findings": ";".join(findings),
        "source": item.image_path,
        "height": height,
        "width": width,
        PATIENT_COLUMN: item.patient_id,
    }
    return ItemResult(row, problems)


class MalformedRecord(ValueError):
    """A record or polygon of an annotation file that is not in the format; listed in ``problems.csv``."""


def _record_fields(record: Any) -> tuple[str, list[str], list[Any]]:
    """``file_name``, ``syms`` and ``polygons`` of one record (a JSON object holding the three keys, as
    :func:`_load_records` checked), or :class:`MalformedRecord` saying which is null or of the wrong type."""
    for key, kind in (("file_name", str), ("syms", list), ("polygons", list)):
        if record[key] is None:
            raise MalformedRecord(f"{key} is null")
        if not isinstance(record[key], kind):
            raise MalformedRecord(f"{key} must be a {kind.__name__}, found {type(record[key]).__name__}")
    bad = [name for name in record["syms"] if not isinstance(name, str)]
    if bad:
        raise MalformedRecord(f"syms must be class names (strings), found {bad[0]!r}")
    return record["file_name"], record["syms"], record["polygons"]


def polygon_points(polygon: Any) -> list[tuple[tuple[float, float], ...]]:
    """The polygons (each a tuple of (x, y) points, pixel units) that one ``polygons`` entry holds.

    Accepted: ChestX-Det's ``[[x, y], ...]``; COCO's flat ``[x, y, x, y, ...]``; COCO's list of flat polygons
    ``[[x, y, x, y, ...], ...]`` (one region in several parts). Anything else (null, an odd number of coordinates,
    values that are not finite numbers) raises :class:`MalformedRecord` saying what was found."""
    if not isinstance(polygon, list) or not polygon:
        raise MalformedRecord(f"the polygon must be a list of points, found {json.dumps(polygon)[:60]}")
    if all(_is_number(value) for value in polygon):  # COCO flat
        parts = [polygon]
    elif all(isinstance(point, list) and len(point) == 2 and all(map(_is_number, point)) for point in polygon):
        return [tuple((float(x), float(y)) for x, y in polygon)]
    elif all(isinstance(part, list) and part and all(map(_is_number, part)) for part in polygon):  # COCO parts
        parts = polygon
    else:
        raise MalformedRecord(f"not a list of [x, y] points nor COCO flat coordinates: {json.dumps(polygon)[:60]}")
    for part in parts:
        if len(part) % 2:
            raise MalformedRecord(f"COCO-style flat polygon with an odd number ({len(part)}) of coordinates")
    return [tuple((float(part[i]), float(part[i + 1])) for i in range(0, len(part), 2)) for part in parts]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _load_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        if path.suffix == ".gz":  # the annotation files as some mirrors ship them
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                records = json.load(handle)
        else:
            records = json.loads(path.read_text())
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrepareError(f"{path}: cannot read the annotation JSON: {error}") from error
    if not isinstance(records, list):
        raise PrepareError(f"{path}: expected a list of records, found {type(records).__name__}.")
    for index, record in enumerate(records):
        missing = [
            key for key in ("file_name", "syms", "polygons") if not isinstance(record, dict) or key not in record
        ]
        if missing:
            raise PrepareError(f"{path}, record {index}: missing {missing}.")
    return records
