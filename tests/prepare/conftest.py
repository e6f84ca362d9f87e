"""Raw-download look-alikes written to tmp_path (a SIIM-ACR folder: nested DICOMs + RLE CSV) and the CLI and PNG
helpers the prepare tests share."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrseg.imageio.dicom import write_dicom
from cxrseg.prepare.rle import rle_encode


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    """``python -m cxrseg prepare ARGS`` in a subprocess (the real entry point, exit status and output)."""
    return subprocess.run([sys.executable, "-m", "cxrseg", "prepare", *args], capture_output=True, text=True)


def read_png(path: Path) -> np.ndarray:
    """A written PNG as stored (8 or 16 bit), asserting it is readable."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def radiograph(size: int, seed: int) -> np.ndarray:
    """A smooth, noisy uint8 [size, size] image (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(3 * xx + seed) * np.cos(2 * yy) + rng.normal(0, 8, (size, size))
    return base.clip(0, 255).astype(np.uint8)


def disk(size: int, row: int, col: int, radius: float) -> np.ndarray:
    """uint8 0/1 [size, size] with a filled disk."""
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - row) ** 2 + (xx - col) ** 2 <= radius**2).astype(np.uint8)


@dataclass
class SiimRaw:
    """A SIIM-like download. masks: expected union per labelled ImageId; rows: the CSV rows per ImageId."""

    root: Path
    dicom_dir: Path
    test_dir: Path
    csv: Path
    size: int
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    unlabelled: str = "1.2.826.4"
    missing: str = "1.2.826.9"
    test_id: str = "1.2.826.5"

    def cli_args(self, test: bool = True) -> list[str]:
        """The input flags of ``cxrseg prepare siim`` for this download (with the test folder if ``test``)."""
        args = ["--dicom-dir", str(self.dicom_dir), "--rle-csv", str(self.csv)]
        return args + ["--test-dicom-dir", str(self.test_dir)] if test else args


def write_siim_raw(root: Path, stage: int = 1, size: int = 128) -> SiimRaw:
    """Write ``root/dicom-images-train/<study>/<series>/<ImageId>.dcm``, a test folder and the RLE CSV.

    Images: two regions in two overlapping rows (1.2.826.1), negative (1.2.826.2), a 2x2-pixel lesion
    (1.2.826.3), a DICOM without a row (unlabelled), a row without a DICOM (missing) and one test DICOM.
    stage 1 spells the CSV ``ImageId, EncodedPixels`` with leading spaces; stage 2 ``ImageId,EncodedPixels``.
    """
    raw = SiimRaw(root, root / "dicom-images-train", root / "dicom-images-test", root / "train-rle.csv", size)
    regions = {
        "1.2.826.1": [disk(size, size // 3, size // 3, size / 8), disk(size, size // 3 + 8, size // 3 + 6, size / 10)],
        "1.2.826.2": [],
        "1.2.826.3": [np.pad(np.ones((2, 2), np.uint8), ((size // 2, size // 2 - 2), (size // 4, 3 * size // 4 - 2)))],
    }
    for image_id, parts in regions.items():
        raw.rows[image_id] = [rle_encode(part) for part in parts] or ["-1"]
        raw.masks[image_id] = np.bitwise_or.reduce(parts) if parts else np.zeros((size, size), np.uint8)
    raw.rows[raw.missing] = [rle_encode(disk(size, 20, 20, 5))]
    dicoms = {image_id: raw.dicom_dir for image_id in regions} | {
        raw.unlabelled: raw.dicom_dir,
        raw.test_id: raw.test_dir,
    }
    for number, (image_id, folder) in enumerate(dicoms.items()):
        pixels = radiograph(size, number)
        raw.pixels[image_id] = pixels
        path = folder / f"study{number}" / f"series{number}" / f"{image_id}.dcm"
        write_dicom(
            path,
            pixels,
            SOPInstanceUID=image_id,
            PatientID=f"p{number}",
            PatientSex="MF"[number % 2],
            PatientAge=f"{40 + number:03d}Y",
            ViewPosition=("PA", "AP")[number % 2],
        )
    header = "ImageId, EncodedPixels" if stage == 1 else "ImageId,EncodedPixels"
    space = " " if stage == 1 else ""
    lines = [header] + [f"{image_id},{space}{rle}" for image_id, rles in raw.rows.items() for rle in rles]
    raw.csv = root / ("train-rle.csv" if stage == 1 else "stage_2_train.csv")
    raw.csv.write_text("\n".join(lines) + "\n")
    return raw


@pytest.fixture
def siim_raw(tmp_path) -> SiimRaw:
    return write_siim_raw(tmp_path / "raw")


@pytest.fixture
def make_siim_raw():
    """The writer itself, for tests that need another stage or size."""
    return write_siim_raw
