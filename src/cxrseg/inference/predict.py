"""Predict masks for PNG, JPEG or DICOM files of any size, batched, with reading overlapped with inference.

Outputs in ``OUT`` (each file written atomically: temporary file, then rename):

* ``masks/<id>.png`` at the input's original size. One class: 8-bit 0/255. Several (multi-label, or single-label
  with several classes besides background): one 16-bit PNG bit field per image (bit c = class c,
  :func:`cxrseg.labels.pack_multilabel`, the PNG layout's mask format). ``OUT/labels.json`` names the classes (in
  bit order), with the model's own names.
* ``overlays/<id>.png``: the image with each mask filled translucent and outlined (multi-label: a legend of the
  classes present).
* with ``save_probabilities``: ``probabilities/<id>.png`` (single-label) or ``probabilities/<id>/<class>.png``
  (multi-label, spaces in names → ``_``), 8-bit ``round(255 * p)`` at the original size.
* with ``submission``: the SIIM Kaggle CSV ``ImageId,EncodedPixels``, one row per image in input order, ``-1`` when
  empty, RLE (:func:`cxrseg.prepare.rle.rle_encode`) of the mask at 1024x1024 — an input of another size has its mask
  resized there with nearest neighbour. Single-foreground models only.
* with ``dicom_seg`` (``binary`` or ``fractional``), for each DICOM input: ``dicom_seg/<id>.dcm``, a DICOM
  Segmentation referencing it (:func:`cxrseg.imageio.dicom_seg.write_dicom_seg`): the masks (binary) or the
  probabilities (fractional), one segment per output class; other inputs get none.
* ``problems.csv`` (``path,error``) when an input could not be read; it is skipped and the others complete.

``OUT`` must be new, empty or an earlier ``predict`` output (:func:`cxrseg.files.check_output_folder`), apart from the
inputs; an existing ``submission`` file is replaced only if it is a submission CSV.

``<id>`` is the file name without its suffix (SIIM's ImageId for its DICOMs). Masks follow the model's
``postprocess.json`` unless ``use_postprocess`` is off (see :meth:`cxrseg.inference.predictor.Predictor.masks`).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrseg.errors import PredictError
from cxrseg.files import PREDICTIONS, AtomicCsv, check_output_file, check_output_folder, mark_output
from cxrseg.imageio.dicom_seg import write_dicom_seg
from cxrseg.imageio.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_image, write_png
from cxrseg.inference.predictor import Predictor
from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.labels import LabelSet, pack_multilabel
from cxrseg.plots import class_colours, overlay
from cxrseg.prepare.rle import rle_encode

logger = logging.getLogger(__name__)


SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")
"""The header of the SIIM-ACR submission CSV."""
OUTPUT_WRITERS = min(8, os.cpu_count() or 1)
"""Threads writing masks, overlays and probabilities while the model runs: a GPU outruns one writer (see
``bench/inference.py``)."""

DICOM_SEG_TYPES = ("binary", "fractional")
"""What ``dicom_seg`` writes: the masks, or the probabilities (DICOM SEG ``FRACTIONAL``, ``PROBABILITY``)."""

SUBMISSION_SIZE = 1024
"""Side of the masks the SIIM-ACR submission RLE encodes (the competition's images are 1024x1024)."""


def list_inputs(path: str | os.PathLike) -> list[Path]:
    """The files to predict: ``path`` itself, or every PNG/JPEG/DICOM under the folder (recursive, sorted).

    Raises :class:`PredictError` for a missing path, an empty folder, or two files with the same id (name
    without suffix), naming both.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PredictError(f"{path} holds no {', '.join(IMAGE_SUFFIXES)} files.")
    else:
        raise PredictError(f"Input {path} does not exist.")
    seen: dict[str, Path] = {}
    for file in files:
        if file.stem in seen:
            raise PredictError(f"Two inputs have the id {file.stem!r}: {seen[file.stem]} and {file}; rename one.")
        seen[file.stem] = file
    return files


def is_submission(path: Path) -> bool:
    """Whether the file at ``path`` is a submission CSV (its first line is the header cxrseg writes)."""
    with path.open("rb") as handle:
        return handle.readline().rstrip(b"\r\n") == b",".join(name.encode() for name in SUBMISSION_COLUMNS)


class InputImages(Dataset):
    """Reads and preprocesses one input per item (in DataLoader workers). An unreadable file gives an item with
    ``error`` set instead of raising, so one bad file does not stop the run."""

    def __init__(self, files: Sequence[Path], preprocessor: Preprocessor) -> None:
        self.files = list(files)
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            image = read_image(path)
            return {"index": index, "image": image, "pixel_values": self.preprocessor(image), "error": None}
        except Exception as error:  # any failure to read one input is reported, not fatal
            logger.debug("Cannot read %s", path, exc_info=True)
            message = str(error) if str(path) in str(error) else f"{path}: {type(error).__name__}: {error}"
            return {"index": index, "image": None, "pixel_values": None, "error": message}


def _collate_items(items: list[dict]) -> list[dict]:
    return items


@dataclass
class PredictionSummary:
    """What a run did: counts, skipped inputs as (path, error), and the files written."""

    num_inputs: int
    num_predicted: int = 0
    num_positive: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    out_dir: Path | None = None
    submission: Path | None = None

    def lines(self) -> list[str]:
        lines = [
            f"Predicted {self.num_predicted} of {self.num_inputs} images ({self.num_positive} with a finding) "
            f"→ {self.out_dir}"
        ]
        if self.submission is not None:
            lines.append(f"Submission: {self.submission} ({self.num_predicted} rows)")
        if self.problems:
            lines.append(f"Skipped {len(self.problems)} unreadable input(s), listed in {self.out_dir}/problems.csv:")
            lines += [f"  {error}" for _, error in self.problems]  # each error names its file
        return lines


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def predict(
    segmenter: Predictor,
    inputs: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tta: str = "none",
    submission: str | os.PathLike | None = None,
    save_probabilities: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    dicom_seg: str | None = None,
    overlays: bool = True,
) -> PredictionSummary:
    """Predict every input (see the module docstring for the outputs) and return a summary. dicom_seg: None, or
    one of :data:`DICOM_SEG_TYPES` to also write a DICOM SEG for each DICOM input. overlays: False writes no
    ``overlays/`` (a third of predict's time on a 2-core CPU, BENCHMARKS.md)."""
    names = segmenter.output_names
    if dicom_seg not in (None, *DICOM_SEG_TYPES):
        raise PredictError(f"dicom_seg must be one of {DICOM_SEG_TYPES} (or None), got {dicom_seg!r}.")
    multilabel = len(names) > 1
    if submission is not None and multilabel:
        raise PredictError(
            f"--submission writes the SIIM pneumothorax CSV; {segmenter.source} predicts {len(names)} classes."
        )
    files = list_inputs(inputs)
    out = Path(out_dir)
    check_output_folder(out, PREDICTIONS, inputs=[inputs])
    if submission is not None:
        check_output_file(submission, is_submission, inputs=[inputs])
    mark_output(out, PREDICTIONS)
    # labels.json names the masks' classes: bit fields over the foreground outputs for several (whatever the
    # model's own label set), 0/255 of the one class otherwise
    task = segmenter.labels.task
    (LabelSet(task, names, multilabel=True) if multilabel else LabelSet(task, ("background", *names), False)).save(out)
    colours = class_colours(len(names))
    loader = DataLoader(
        InputImages(files, segmenter.preprocessor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_items,
    )
    summary = PredictionSummary(len(files), out_dir=out)
    csv_writer = AtomicCsv(Path(submission), SUBMISSION_COLUMNS) if submission is not None else None
    writing: deque[tuple[str, Future]] = deque()  # (image id, its _write_outputs), in input order

    def finish_one() -> None:
        image_id, future = writing.popleft()
        masks = future.result()
        summary.num_predicted += 1
        summary.num_positive += bool(masks.any())
        if csv_writer is not None:
            csv_writer.writerow((image_id, rle_encode(_at_submission_size(masks[0]))))

    try:
        # Outputs are written by threads while the model works on the next batch (OpenCV's resizing and PNG
        # encoding release the GIL); at most two batches wait, which bounds memory.
        with (
            tqdm(total=len(files), desc="predicting", unit="img") as progress,
            ThreadPoolExecutor(OUTPUT_WRITERS) as writers,
        ):
            for items in loader:
                good = [item for item in items if item["error"] is None]
                for item in items:
                    if item["error"] is not None:
                        logger.warning("Skipping an unreadable input: %s", item["error"])
                        summary.problems.append((str(files[item["index"]]), item["error"]))
                if good:
                    probs = segmenter.probabilities(torch.stack([item["pixel_values"] for item in good]), tta)
                    for item, image_probs in zip(good, probs):
                        source = files[item["index"]]
                        seg = dicom_seg if source.suffix.lower() in DICOM_SUFFIXES else None
                        image_id = source.stem
                        drawn = colours if overlays else None
                        args = (segmenter, out, source, item["image"], image_probs, drawn, save_probabilities, seg)
                        writing.append((image_id, writers.submit(_write_outputs, *args)))
                while len(writing) > 2 * batch_size:
                    finish_one()
                progress.update(len(items))
            while writing:
                finish_one()
        if csv_writer is not None:
            csv_writer.commit()
            summary.submission = Path(submission)
    except BaseException:
        if csv_writer is not None:
            csv_writer.discard()
        raise
    _write_problems(out, summary.problems, submission=csv_writer is not None)
    return summary


def _write_problems(out: Path, problems: list[tuple[str, str]], submission: bool) -> None:
    """``out/problems.csv`` (path, error) of the skipped inputs; none (an earlier run's removed) without any."""
    problems_path = out / "problems.csv"
    if problems:
        with AtomicCsv(problems_path, ("path", "error")) as problems_csv:
            for row in problems:
                problems_csv.writerow(row)
    elif problems_path.exists():
        problems_path.unlink()  # from an earlier run into the same folder: it would describe other inputs
    if problems and submission:
        logger.warning(
            "The submission lacks the %d skipped image(s); Kaggle needs a row for every image.", len(problems)
        )


def _write_outputs(
    segmenter: Predictor,
    out: Path,
    source: Path,
    image: np.ndarray,
    probs: torch.Tensor,
    colours: np.ndarray | None,
    save_probabilities: bool,
    dicom_seg: str | None = None,
) -> np.ndarray:
    """Write the mask, overlay (in ``colours``; None: no overlay) and (optionally) probabilities and DICOM SEG of the
    input ``source`` at its original size; returns masks uint8 0/1 [K, H, W]."""
    names = segmenter.output_names
    image_id = source.stem
    probs_at_size = segmenter.resize_probabilities(probs, image.shape[:2])
    masks = segmenter.masks(probs, probs_at_size)
    write_png(out / "masks" / f"{image_id}.png", mask_png_pixels(masks))
    if colours is not None:
        legend = names if len(names) > 1 else None
        write_png(out / "overlays" / f"{image_id}.png", overlay(image, masks, colours, names=legend))
    if save_probabilities:
        levels = (probs_at_size.numpy() * 255).round().astype(np.uint8)
        if len(names) == 1:
            write_png(out / "probabilities" / f"{image_id}.png", levels[0])
        else:
            for name, plane in zip(names, levels):
                write_png(out / "probabilities" / image_id / f"{_safe_name(name)}.png", plane)
    if dicom_seg is not None:
        fractional = dicom_seg == "fractional"
        write_dicom_seg(
            source,
            out / "dicom_seg" / f"{image_id}.dcm",
            probs_at_size.numpy() if fractional else masks,
            names,
            task=segmenter.labels.task,
            fractional=fractional,
            model_name=model_name(segmenter),
            software_version=cxrseg_version(),
        )
    return masks


def model_name(segmenter: Predictor) -> str:
    """How a DICOM SEG names the model: its Hub id, or a local folder's name only (no local path leaves here)."""
    return Path(segmenter.source).name if segmenter.is_local else segmenter.source


def cxrseg_version() -> str:
    """cxrseg's installed version (the SEG's software version); "unknown" when run from a source tree."""
    try:
        return metadata.version("cxrseg")
    except metadata.PackageNotFoundError:
        return "unknown"


def mask_png_pixels(masks: np.ndarray) -> np.ndarray:
    """The pixels of a mask PNG from masks uint8 0/1 [K, H, W]: one class → uint8 0/255 [H, W]; several → the
    uint16 bit field [H, W] of :func:`cxrseg.labels.pack_multilabel` (bit c = class c)."""
    return masks[0] * np.uint8(255) if masks.shape[0] == 1 else pack_multilabel(masks)


def _at_submission_size(mask: np.ndarray) -> np.ndarray:
    """A mask [H, W] at 1024x1024 (nearest neighbour when resized), as the SIIM RLE expects."""
    if mask.shape == (SUBMISSION_SIZE, SUBMISSION_SIZE):
        return mask
    return cv2.resize(mask, (SUBMISSION_SIZE, SUBMISSION_SIZE), interpolation=cv2.INTER_NEAREST)
