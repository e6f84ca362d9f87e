"""Writing the PNG layout: the shared part of ``cxrseg prepare siim|chestxdet|folder``.

Every prepare command turns its source into work items, converts each item in a worker (one process per
``--num-proc``) and then calls :func:`write_layout`, which:

* builds the layout in a temporary folder next to ``OUT`` and renames it into place only when everything succeeded,
  so an interrupted run never leaves a half dataset (``OUT`` must be empty or absent unless ``overwrite``);
* writes ``problems.csv`` (every left-out image or dropped region, with the reason), ``metadata.csv`` (one row per
  written image) and ``labels.json``;
* optionally adds ``hf_dataset/`` (:func:`layout_to_datasetdict`, ``save_to_disk``) and pushes it privately.

Resizing rules (:func:`resize_image`, :func:`resize_mask`) live here too, so all sources shrink the same way.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from cxrseg.errors import PrepareError
from cxrseg.labels import LabelSet

logger = logging.getLogger(__name__)

PROBLEM_COLUMNS = ("image_id", "split", "reason", "action", "detail")
IMAGE_SKIPPED = "image skipped"
"""``Problem.action`` of a problem that left the whole image out of the layout."""


@dataclass(frozen=True)
class Problem:
    """One row of ``problems.csv``. action: what was done, e.g. :data:`IMAGE_SKIPPED` or "region dropped"."""

    image_id: str
    split: str
    reason: str
    action: str
    detail: str = ""


@dataclass
class ItemResult:
    """What a worker returns for one item: the ``metadata.csv`` row of the written image (None if skipped) and
    the problems found. The row holds at least ``image_id``, ``split`` and ``is_positive`` ("" when unlabelled)."""

    row: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Summary:
    """Counts of a prepare run. positive/negative count labelled images; unlabelled ones (test) are apart."""

    out: Path
    written: int = 0
    positive: int = 0
    negative: int = 0
    unlabelled: int = 0
    per_split: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    other_problems: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        lines = [
            f"Wrote {self.written} images to {self.out} ("
            + ", ".join(f"{split}: {count}" for split, count in sorted(self.per_split.items()))
            + f"); positive {self.positive}, negative {self.negative}, without mask {self.unlabelled}.",
            f"Skipped {sum(self.skipped.values())} images"
            + ("" if not self.skipped else ": " + ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))),
        ]
        if self.other_problems:
            lines.append(
                "Other problems (image kept): " + ", ".join(f"{r}: {n}" for r, n in sorted(self.other_problems.items()))
            )
        if self.skipped or self.other_problems:
            lines.append(f"Details: {self.out / 'problems.csv'}")
        return "\n".join(lines)


def check_image_id(image_id: str, where: str) -> str:
    """``image_id`` if it is a plain file name (no path separators, not ``.``/``..``, no control characters);
    otherwise :class:`PrepareError` naming ``where`` (the row or file it came from)."""
    bad = (
        not image_id
        or image_id in (".", "..")
        or any(sep in image_id for sep in ("/", "\\", os.sep))
        or any(ord(char) < 32 for char in image_id)
        or image_id != image_id.strip()
    )
    if bad:
        raise PrepareError(f"{where}: ImageId {image_id!r} is not a plain file name; refusing to write it.")
    return image_id


# ---------------------------------------------------------------- pixels


def resize_image(image: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 ``[H, W]`` → uint8 ``[size, size]`` with area interpolation (``cv2.INTER_AREA``: the mean of each
    output pixel's source block when shrinking). ``size`` None or equal to the input keeps the pixels exactly."""
    if size is None or image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """Binary mask ``[H, W]`` (non-zero = finding) → uint8 0/1 ``[size, size]``, keeping small lesions.

    Rule when shrinking: ``coverage`` = area-interpolated fraction of finding pixels in each output pixel's source
    block (``cv2.INTER_AREA`` of the 0/1 mask as float); the output is ``coverage >= 0.5``, and in addition every
    connected region (8-connectivity) of ``coverage > 0`` that has no pixel left by the threshold is kept whole.
    So no lesion disappears: a non-empty mask never becomes empty, and each region the 0.5 threshold would erase
    survives as the output pixels it touches. When enlarging, nearest neighbour. ``size`` None or equal to the
    input keeps the mask exactly.
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    if size is None or binary.shape == (size, size):
        return binary
    if not binary.any():  # most images are negative: skip the float resize
        return np.zeros((size, size), dtype=np.uint8)
    if size > min(binary.shape):
        return cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    coverage = cv2.resize(binary.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    kept = (coverage >= 0.5).astype(np.uint8)
    touched = (coverage > 0).astype(np.uint8)
    if np.array_equal(kept, touched):
        return kept
    count, regions = cv2.connectedComponents(touched, connectivity=8)
    kept_regions = np.zeros(count, dtype=bool)
    kept_regions[np.unique(regions[kept == 1])] = True
    lost = ~kept_regions
    lost[0] = False  # label 0 is the background of `touched`
    return (kept | lost[regions]).astype(np.uint8)


def read_gray(path: str | Path) -> np.ndarray:
    """A PNG/JPEG/TIFF/BMP image as uint8 ``[H, W]``: colour → luma (``cv2.COLOR_BGR2GRAY``), 16-bit → linear
    min-max stretch to 0..255. Raises :class:`PrepareError` naming the file if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PrepareError(f"{path}: not a readable image file.")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        image = np.rint((values - low) * 255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = image.astype(np.uint8)
    return image


def write_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 or uint16 ``[H, W]`` as a PNG (cv2, fast compression); raises OSError if it fails."""
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"Could not write {path}.")


# ---------------------------------------------------------------- running and writing


def parallel_map(
    function: Callable[[Any], ItemResult], items: Sequence[Any], num_proc: int, desc: str
) -> Iterator[ItemResult]:
    """``function`` over ``items`` with a progress bar: in this process when ``num_proc`` <= 1, else in a pool of
    ``num_proc`` processes (results in completion order). ``function`` must be picklable (module-level)."""
    with tqdm(total=len(items), desc=desc, unit="img") as progress:
        if num_proc <= 1 or len(items) <= 1:
            for item in items:
                yield function(item)
                progress.update()
            return
        chunksize = max(1, min(16, len(items) // (4 * num_proc)))
        # forkserver/spawn, not fork: forking a parent whose OpenCV/BLAS threads are running can deadlock the child.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":  # import the worker's modules (pydicom, cv2, ...) once, not in every worker
            context.set_forkserver_preload([getattr(function, "convert", function).__module__])
        with ProcessPoolExecutor(max_workers=num_proc, mp_context=context, initializer=_init_worker) as pool:
            for result in pool.map(function, items, chunksize=chunksize):
                yield result
                progress.update()


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe the CPUs


@contextmanager
def atomic_output(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder next to ``out`` that replaces ``out`` when the block ends without error.

    Refuses an ``out`` that is a file, or a non-empty folder unless ``overwrite``. On error the temporary folder is
    removed and ``out`` is untouched.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PrepareError(f"{out} is not empty; pass --overwrite to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if out.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
        out.rename(previous / out.name)
        building.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        building.rename(out)


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def write_layout(
    out: str | Path,
    items: Sequence[Any],
    convert: Callable[[Any, Path], ItemResult],
    *,
    labels: LabelSet,
    splits: Iterable[str],
    metadata_columns: Sequence[str],
    problems: Sequence[Problem] = (),
    num_proc: int = 1,
    overwrite: bool = False,
    strict: bool = False,
    save_dataset: bool = False,
    push_to_hub: str | None = None,
    desc: str = "prepare",
) -> Summary:
    """Convert ``items`` with ``convert(item, build_root)`` into the layout at ``out`` (atomically; see module).

    problems: found before converting (e.g. unlabelled images); with ``strict`` any problem raises
    :class:`PrepareError` and nothing is written. Returns the :class:`Summary`.
    """
    problems = list(problems)
    if strict and problems:
        raise _strict_failure(problems)
    out = Path(out).absolute()
    rows: list[dict[str, Any]] = []
    with atomic_output(out, overwrite) as root:
        for split in splits:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for result in parallel_map(_Bound(convert, root), items, num_proc, desc):
            problems.extend(result.problems)
            if result.row is not None:
                rows.append(result.row)
        if strict and problems:
            raise _strict_failure(problems)
        rows.sort(key=lambda row: (row["split"], row["image_id"]))
        problems.sort(key=lambda problem: (problem.split, problem.image_id, problem.reason))
        write_csv(root / "metadata.csv", rows, metadata_columns)
        write_csv(root / "problems.csv", (vars(problem) for problem in problems), PROBLEM_COLUMNS)
        spec = {"task": labels.task, "names": list(labels.names), "multilabel": labels.multilabel}
        (root / "labels.json").write_text(json.dumps(spec, indent=2) + "\n")
        if save_dataset:
            layout_to_datasetdict(root).save_to_disk(str(root / "hf_dataset"))
    summary = _summarize(out, rows, problems)
    if push_to_hub:
        logger.info("Pushing the dataset to the Hub as a PRIVATE repository %s.", push_to_hub)
        layout_to_datasetdict(out).push_to_hub(push_to_hub, private=True)
    return summary


class _Bound:
    """``convert`` with the build root bound; picklable for worker processes (unlike a lambda)."""

    def __init__(self, convert: Callable[[Any, Path], ItemResult], root: Path):
        self.convert, self.root = convert, root

    def __call__(self, item: Any) -> ItemResult:
        return self.convert(item, self.root)


def _strict_failure(problems: list[Problem]) -> PrepareError:
    counts = Counter(problem.reason for problem in problems)
    shown = "\n".join(f"  {p.split}/{p.image_id}: {p.reason} ({p.action}) {p.detail}" for p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return PrepareError(
        f"--strict: {len(problems)} problems ({', '.join(f'{r}: {n}' for r, n in sorted(counts.items()))}); "
        f"nothing was written.\n{shown}{more}"
    )


def _summarize(out: Path, rows: list[dict[str, Any]], problems: list[Problem]) -> Summary:
    summary = Summary(out=out, written=len(rows))
    for row in rows:
        summary.per_split[row["split"]] += 1
        if row["is_positive"] == "":
            summary.unlabelled += 1
        elif row["is_positive"]:
            summary.positive += 1
        else:
            summary.negative += 1
    for problem in problems:
        counter = summary.skipped if problem.action == IMAGE_SKIPPED else summary.other_problems
        counter[problem.reason] += 1
    return summary


# ---------------------------------------------------------------- datasets


def layout_to_datasetdict(root: str | Path):
    """The PNG layout at ``root`` as a ``datasets.DatasetDict`` with one split per ``images/<split>/`` folder.

    Columns: ``image`` (``datasets.Image``, 8-bit gray), ``mask`` (``datasets.Image``: 0/255 8-bit or the 16-bit
    multi-label bit field; None where the split has no mask, e.g. SIIM test), ``image_id`` (string) and
    ``is_positive`` (bool: any non-zero mask pixel; None without a mask). The files' bytes are embedded when the
    dataset is saved (``save_to_disk``) or pushed. ``root/labels.json`` names the classes.
    """
    import datasets

    root = Path(root)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "image_id": datasets.Value("string"),
            "is_positive": datasets.Value("bool"),
        }
    )
    splits = {}
    for split_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        columns: dict[str, list] = {name: [] for name in features}
        for image_path in sorted(split_dir.glob("*.png")):
            mask_path = root / "masks" / split_dir.name / image_path.name
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED) if mask_path.exists() else None
            if mask_path.exists() and mask is None:
                raise PrepareError(f"{mask_path}: not a readable PNG.")
            columns["image"].append(str(image_path))
            columns["mask"].append(None if mask is None else str(mask_path))
            columns["image_id"].append(image_path.stem)
            columns["is_positive"].append(None if mask is None else bool(mask.any()))
        splits[split_dir.name] = datasets.Dataset.from_dict(columns, features=features)
    if not splits:
        raise PrepareError(f"{root / 'images'} holds no split folders: not a PNG layout.")
    return datasets.DatasetDict(splits)
