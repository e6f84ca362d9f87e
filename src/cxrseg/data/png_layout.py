"""Read and validate the PNG layout that training uses.

``ROOT/images/<split>/<ImageId>.png`` (8-bit gray) with ``ROOT/masks/<split>/<ImageId>.png``: single-label masks
are 0/1 or 0/255 (any non-zero is the finding), multi-label masks are 16-bit bit fields
(:func:`cxrseg.labels.pack_multilabel`). ``ROOT/labels.json`` names the task; without it the task is pneumothorax.

Indexing reads every mask once: it validates the pair (readable, same size, allowed values) and counts pixels per
class, which gives ``is_positive`` and the exact class weights. The index is cached in ``ROOT/.cxrseg-cache/``
keyed by the label set and the files' names, sizes and modification times, so a second run costs a directory
listing, one read (no decoding) of every mask file and three mask decodes. The cache holds no paths (they come from
the listing, so the dataset can be moved or used from any working directory), and it is used only when it is well
formed, lists exactly the images found, holds the SHA-256 of the mask files' bytes it was made from, and agrees with
the first, middle and last pair indexed again; otherwise (a cache copied from elsewhere, edited or stale) the
layout is indexed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrseg.constants import LABELS_FILENAME
from cxrseg.errors import DataError
from cxrseg.files import atomic_write_text
from cxrseg.labels import PNEUMOTHORAX, LabelSet
from cxrseg.parallel import parallel_map

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class IndexedImage:
    """One validated image/mask pair. pixel_counts: per output class (single-label: [background, finding];
    multi-label: pixels where each class is on), at the stored resolution. multilabel: whether the counts are of
    a multi-label set (no background count)."""

    image_id: str
    image_path: str
    mask_path: str
    width: int
    height: int
    pixel_counts: tuple[int, ...]
    multilabel: bool = False

    @property
    def is_positive(self) -> bool:
        """Whether any pixel is of a class other than background (multi-label: of any class)."""
        counts = self.pixel_counts
        return any(counts) if self.multilabel else any(counts[1:])


def read_layout_labels(root: str | os.PathLike) -> LabelSet:
    """The label set of the layout at ``root``: ``ROOT/labels.json`` (:meth:`LabelSet.load`), pneumothorax when
    the file is absent."""
    path = Path(root) / LABELS_FILENAME
    return LabelSet.load(path) if path.exists() else PNEUMOTHORAX


def list_pairs(root: str | os.PathLike, split: str) -> list[tuple[str, Path, Path]]:
    """(image_id, image path, mask path) of every image in ``split``; a missing mask is an error naming it."""
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir} does not exist: expected ROOT/images/{split}/<ImageId>.png (see README, Data).")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir} holds no PNG images: the '{split}' split is empty.")
    pairs = []
    for image in images:
        mask = mask_dir / image.name
        if not mask.exists():
            raise DataError(f"No mask for {image}: expected {mask} (an empty mask is an all-zero PNG).")
        pairs.append((image.stem, image, mask))
    read = {image.name for image in images}
    report_unread(image_dir, [p for p in image_dir.iterdir() if p.name not in read])
    if mask_dir.is_dir():
        report_unread(mask_dir, [p for p in mask_dir.iterdir() if p.name not in read])
    return pairs


def report_unread(folder: Path, unread: list[Path]) -> list[Path]:
    """Warn, counting and naming them (the first five), about the entries of a layout ``folder`` that are not read:
    files that are not PNG (a JPEG with a mask is not read), masks without an image, subfolders. Hidden entries
    (``.DS_Store``, cxrseg's temporary files) are left out. Returns the entries named."""
    unread = sorted(p for p in unread if not p.name.startswith("."))
    if unread:
        names = ", ".join(p.name for p in unread[:5]) + (", ..." if len(unread) > 5 else "")
        logger.warning(
            "%d entr%s of %s %s not read: %s. The layout reads only <ImageId>.png pairs in images/ and masks/; "
            "convert other images with `cxrseg prepare folder` (see docs/data.md).",
            len(unread), "y" if len(unread) == 1 else "ies", folder, "is" if len(unread) == 1 else "are", names,
        )  # fmt: skip
    return unread


def _index_pair(args: tuple[str, str, str, LabelSet]) -> IndexedImage:
    image_id, image_path, mask_path, labels = args
    try:
        with Image.open(image_path) as image:
            image.verify()
            size = image.size
    except Exception as error:  # PIL raises many types for corrupt files
        raise DataError(f"Unreadable image {image_path}: {error}") from error
    try:
        with Image.open(mask_path) as mask_image:
            mask = np.asarray(mask_image)
    except Exception as error:
        raise DataError(f"Unreadable mask {mask_path}: {error}") from error
    if mask.ndim != 2:
        raise DataError(f"Mask {mask_path} has shape {mask.shape}: expected a single-channel PNG.")
    if (mask.shape[1], mask.shape[0]) != size:
        raise DataError(
            f"Size mismatch: image {image_path} is {size[0]}x{size[1]}, mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)."
        )
    counts = mask_pixel_counts(mask, labels, mask_path)
    return IndexedImage(image_id, str(image_path), str(mask_path), size[0], size[1], counts, labels.multilabel)


def mask_pixel_counts(mask: np.ndarray, labels: LabelSet, where: object) -> tuple[int, ...]:
    """Per-class pixel counts of one stored mask ([H, W]; see module docstring), validating its values.

    Single-label: (background, class 1, ...) pixels, with any non-zero counted as class 1 for binary tasks.
    Multi-label: pixels where each class's bit is set. ``where`` names the mask in errors.
    """
    num_labels = labels.num_labels
    if labels.multilabel:
        bits = mask.astype(np.uint32)
        if (bits >> num_labels).any():
            raise DataError(f"Mask {where} sets bits beyond the {num_labels} classes of labels.json.")
        return tuple(int(((bits >> c) & 1).sum()) for c in range(num_labels))
    values = np.unique(mask)
    allowed = {0, 1, 255} if num_labels == 2 else set(range(num_labels))
    bad = sorted(set(values.tolist()) - allowed)
    if bad:
        raise DataError(
            f"Mask {where} has values {bad[:5]}: expected {sorted(allowed)} (0 = background; 1 or 255 = finding)."
        )
    if num_labels == 2:
        positive = int(np.count_nonzero(mask))
        return (mask.size - positive, positive)
    return tuple(int(n) for n in np.bincount(mask.ravel(), minlength=num_labels))


CACHE_FORMAT = 4
"""Version of the cache files; part of their key, so files of another format are never read."""


def _fingerprint(pairs: list[tuple[str, Path, Path]], labels: LabelSet) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT};{labels!r}".encode())
    for _, image, mask in pairs:
        for path in (image, mask):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:20]


def _masks_digest(pairs: list[tuple[str, Path, Path]]) -> str:
    """SHA-256 of the mask files' bytes, in listing order: ties a cache to the very masks it counted."""
    digest = hashlib.sha256()
    for _, _, mask in pairs:
        digest.update(mask.read_bytes())
    return digest.hexdigest()


def _cached_rows(cache: Path, pairs: list[tuple[str, Path, Path]], labels: LabelSet) -> list[IndexedImage] | None:
    """The index stored in ``cache`` for ``pairs``, or None when it is absent, malformed or does not describe them
    (the masks' digest, ids in order, sizes, counts that fit the size, and the first, middle and last pair indexed
    again)."""
    if not cache.exists():
        return None
    try:
        stored = json.loads(cache.read_text())
        if stored["masks_sha256"] != _masks_digest(pairs):
            raise ValueError("it was made from other mask files")
        index = []
        for (image_id, image, mask), row in zip(pairs, stored["rows"], strict=True):
            width, height, counts = row["width"], row["height"], tuple(row["pixel_counts"])
            sizes_ok = all(type(n) is int and n >= 0 for n in (width, height, *counts))
            total_ok = max(counts) <= width * height if labels.multilabel else sum(counts) == width * height
            if row["image_id"] != image_id or len(counts) != labels.num_labels or not (sizes_ok and total_ok):
                raise ValueError(f"row {row['image_id']!r} does not fit")
            index.append(IndexedImage(image_id, str(image), str(mask), width, height, counts, labels.multilabel))
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.info("Ignoring the mask index cache %s (%s); indexing again.", cache, error)
        return None
    for position in sorted({0, len(pairs) // 2, len(pairs) - 1}):
        image_id, image, mask = pairs[position]
        if _index_pair((image_id, str(image), str(mask), labels)) != index[position]:
            logger.info("Ignoring the mask index cache %s: it disagrees with %s; indexing again.", cache, mask)
            return None
    return index


def index_layout(root: str | os.PathLike, split: str, labels: LabelSet, num_proc: int = 1) -> list[IndexedImage]:
    """Validate every pair of ``split`` and count its pixels; cached (see module docstring)."""
    pairs = list_pairs(root, split)
    cache = Path(root) / ".cxrseg-cache" / f"index-{split}-{_fingerprint(pairs, labels)}.json"
    cached = _cached_rows(cache, pairs, labels)
    if cached is not None:
        return cached
    jobs = [(i, str(image), str(mask), labels) for i, image, mask in pairs]
    desc = f"Checking {split} masks"
    index = list(parallel_map(_index_pair, jobs, num_proc=num_proc, desc=desc, show_progress=len(jobs) >= 200))
    rows = [
        {"image_id": r.image_id, "width": r.width, "height": r.height, "pixel_counts": r.pixel_counts} for r in index
    ]
    stored = {"masks_sha256": _masks_digest(pairs), "rows": rows}
    try:
        atomic_write_text(cache, json.dumps(stored))
    except OSError as error:  # a read-only dataset still trains; it is just indexed again next time
        logger.warning("Could not cache the index in %s (%s); it will be rebuilt next run.", cache.parent, error)
    return index
