"""Speed of `cxrseg prepare siim` against a plain single-process loop, measured in the same run.

    python bench/prepare.py --num-images 200 --image-size 512

Writes N SIIM-like DICOMs (1024 x 1024, 8-bit MONOCHROME2, JPEG baseline; a third with pneumothorax RLE rows) to a
temporary folder, then times:

* baseline: for each DICOM, ``pydicom.dcmread`` + ``pixel_array`` + PIL ``resize`` (BOX) + PNG ``save``, one process,
  images only (no masks, no checks, no atomic write);
* ``prepare_siim`` with ``--num-proc 1`` and ``--num-proc 2`` (images and masks, everything it does for real).

Prints images/s and the ratio to the baseline, and for each multi-process run how many cores the machine really
gave (a pure-Python loop in N processes against one). Goal: >= 50 images/s with 2 processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cxrseg.imageio.dicom import write_dicom
from cxrseg.prepare.rle import rle_encode
from cxrseg.prepare.siim import prepare_siim
from cxrseg.prepare.writer import PrepareOptions


def make_raw(root: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    """``root/dicom/<study>/<series>/<ImageId>.dcm`` and ``root/train-rle.csv``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:1024, 0:1024]
    yy, xx = rows / 1024, cols / 1024
    lines = ["ImageId,EncodedPixels"]
    for number in range(num_images):
        image_id = f"1.2.826.0.1.{number}"
        phase = rng.uniform(0, 6)
        pixels = 110 + 70 * np.sin(4 * xx + phase) * np.cos(3 * yy) + rng.normal(0, 6, (1024, 1024))
        folder = root / "dicom" / f"study{number}" / f"series{number}"
        write_dicom(
            folder / f"{image_id}.dcm",
            pixels.clip(0, 255).astype(np.uint8),
            SOPInstanceUID=image_id,
            PatientSex="MF"[number % 2],
            PatientAge=f"{30 + number % 50:03d}Y",
            ViewPosition="PA",
        )
        if number % 3 == 0:
            row, col, radius = rng.integers(200, 800, size=2).tolist() + [int(rng.integers(10, 120))]
            mask = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
            lines.append(f"{image_id},{rle_encode(mask)}")
        else:
            lines.append(f"{image_id},-1")
    csv_path = root / "train-rle.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return root / "dicom", csv_path


def baseline(dicom_dir: Path, out: Path, image_size: int) -> int:
    """The plain loop: dcmread + PIL resize + PNG save, one process."""
    out.mkdir(parents=True)
    paths = sorted(dicom_dir.rglob("*.dcm"))
    for path in paths:
        pixels = pydicom.dcmread(path).pixel_array
        Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BOX).save(out / f"{path.stem}.png")
    return len(paths)


def _burn(count: int) -> int:
    total = 0
    for value in range(count):
        total += value
    return total


def cpu_speedup(num_proc: int, count: int = 10_000_000) -> float:
    """Speedup of a pure-Python loop in ``num_proc`` processes over one: how many cores this run really gets
    (on a shared machine it can be well below ``num_proc``)."""
    start = time.perf_counter()
    for _ in range(num_proc):
        _burn(count)
    serial = time.perf_counter() - start
    with ProcessPoolExecutor(num_proc) as pool:
        start = time.perf_counter()
        list(pool.map(_burn, [count] * num_proc))
        return serial / (time.perf_counter() - start)


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-") as tmp:
        root = Path(tmp)
        seconds, _ = timed(make_raw, root, args.num_images)
        print(
            f"made {args.num_images} SIIM-like DICOMs (1024x1024 JPEG baseline) in {seconds:.1f} s; "
            f"{os.cpu_count()} CPUs visible"
        )
        base_seconds, count = timed(baseline, root / "dicom", root / "baseline", args.image_size)
        base_rate = count / base_seconds
        print(f"baseline (dcmread + PIL resize + PNG save, 1 process): {base_rate:7.1f} images/s  (1.00x)")
        for num_proc in args.num_proc:
            options = PrepareOptions(root / f"out{num_proc}", image_size=args.image_size, num_proc=num_proc)
            seconds, summary = timed(prepare_siim, root / "dicom", root / "train-rle.csv", options)
            rate = summary.written / seconds
            print(
                f"prepare siim --num-proc {num_proc} (images + masks):    {rate:7.1f} images/s  "
                f"({rate / base_rate:.2f}x)"
            )
            if num_proc > 1:
                print(f"  (CPU check: {num_proc} processes of a pure-Python loop run {cpu_speedup(num_proc):.2f}x one)")


if __name__ == "__main__":
    main()
