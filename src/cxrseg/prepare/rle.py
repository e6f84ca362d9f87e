"""SIIM-ACR pneumothorax run-length encoding (the competition's ``EncodedPixels``).

Format, as in the competition's ``mask_functions.py``: pixels are numbered in column-major order (down the first
column, then the next; flat index = ``col * height + row``), and the string is pairs ``offset length`` where the
first offset is the 0-based index of the first run's start and every later offset counts the background pixels
between the end of the previous run and the start of this one. ``"-1"`` means no pneumothorax. An image may have
several rows in the CSV; its mask is their union.

Unlike the official ``mask2rle``, :func:`rle_encode` keeps a run that ends on the last pixel.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cxrseg.errors import RLEError

EMPTY = "-1"
"""``EncodedPixels`` of an image without pneumothorax."""


def rle_decode(rle: str, height: int = 1024, width: int = 1024, context: str | None = None) -> np.ndarray:
    """Decode one ``EncodedPixels`` string to a uint8 0/1 mask ``[height, width]`` (a Fortran-ordered array: the
    column-major run order, so re-encoding it needs no transposed copy).

    context: the row or ImageId, named in the error of a malformed string (odd count, non-integers, negative
    numbers, a zero-length run, or runs past the image).
    """
    where = f" ({context})" if context else ""
    text = rle.strip()
    if text == EMPTY or text == "":
        return np.zeros((width, height), dtype=np.uint8).T
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as error:
        raise RLEError(f"EncodedPixels{where} holds a value that is not an integer: {error}") from error
    if values.size % 2:
        raise RLEError(
            f"EncodedPixels{where} has an odd number of values ({values.size}); expected offset/length pairs."
        )
    if (values < 0).any():
        raise RLEError(f"EncodedPixels{where} has a negative value; only '-1' alone means an empty mask.")
    offsets, lengths = values[0::2], values[1::2]
    if (lengths == 0).any():
        raise RLEError(f"EncodedPixels{where} has a run of length 0.")
    ends = np.cumsum(offsets + lengths)
    total = height * width
    if ends[-1] > total:
        raise RLEError(
            f"EncodedPixels{where} runs past the image: ends at pixel {ends[-1]} of {height}x{width}={total}."
        )
    # Alternate background/foreground run lengths, then one np.repeat fills the flat column-major mask.
    run_lengths = np.empty(values.size + 1, dtype=np.int64)
    run_lengths[:-1] = values
    run_lengths[-1] = total - ends[-1]
    run_values = np.zeros(values.size + 1, dtype=np.uint8)
    run_values[1::2] = 1
    flat = np.repeat(run_values, run_lengths)
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask ``[H, W]`` (non-zero = pneumothorax) as ``EncodedPixels``; ``"-1"`` for an empty mask.

    Runs follow the column-major order of :func:`rle_decode`; ``rle_decode(rle_encode(m), H, W) == (m != 0)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask [H, W], got shape {mask.shape}.")
    if not mask.any():
        return EMPTY
    flat = mask.T.reshape(-1) != 0  # column-major order (no copy for the Fortran-ordered masks of rle_decode)
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # run starts and (exclusive) ends, alternating
    if flat[0]:
        boundaries = np.concatenate(([0], boundaries))
    if flat[-1]:  # a run ending on the last pixel is kept (the official mask2rle drops it)
        boundaries = np.concatenate((boundaries, [flat.size]))
    starts, ends = boundaries[0::2], boundaries[1::2]
    offsets = starts.copy()
    offsets[1:] -= ends[:-1]
    pairs = np.stack([offsets, ends - starts], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))


def rle_decode_union(
    rles: Iterable[str], height: int = 1024, width: int = 1024, context: str | None = None
) -> np.ndarray:
    """The union (uint8 0/1 ``[height, width]``) of several ``EncodedPixels`` rows of one image."""
    mask = np.zeros((width, height), dtype=np.uint8).T  # column-major like rle_decode's masks: cheap to re-encode
    for index, rle in enumerate(rles):
        mask |= rle_decode(rle, height, width, context=f"{context}, row {index + 1} of the image" if context else None)
    return mask


def read_rle_csv(path: str | Path) -> dict[str, list[str]]:
    """Read a SIIM RLE CSV into ``{ImageId: [EncodedPixels, ...]}`` in file order.

    Accepts both spellings: stage 1 ``train-rle.csv`` (header ``ImageId, EncodedPixels``, values with a leading
    space) and stage 2 ``stage_2_train.csv`` (``ImageId,EncodedPixels``). Values are stripped. Raises
    :class:`RLEError` naming the file (and line) for an unreadable file, a missing column or an empty ImageId.
    """
    path = Path(path)
    rows: dict[str, list[str]] = {}
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if "ImageId" not in header or "EncodedPixels" not in header:
                raise RLEError(f"{path}: expected the columns ImageId and EncodedPixels, found {header}.")
            id_column, rle_column = header.index("ImageId"), header.index("EncodedPixels")
            for line_number, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise RLEError(f"{path}, line {line_number}: expected {len(header)} fields, found {len(row)}.")
                image_id = row[id_column].strip()
                if not image_id:
                    raise RLEError(f"{path}, line {line_number}: empty ImageId.")
                rows.setdefault(image_id, []).append(row[rle_column].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RLEError(f"{path}: cannot read the RLE CSV ({error}).") from error
    return rows
