"""`cxrseg prepare siim` on a SIIM-like download written in the test (nested JPEG DICOMs + RLE CSV)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrseg.errors import PrepareError, RLEError
from cxrseg.imageio.dicom import read_dicom
from cxrseg.prepare.siim import prepare_siim
from cxrseg.prepare.writer import PrepareOptions
from tests.prepare.conftest import read_png, run_prepare


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_exact_layout_and_reports_problems(siim_raw, tmp_path):
    out = tmp_path / "out"
    result = run_prepare("siim", *siim_raw.cli_args(), "--out", str(out), "--image-size", str(siim_raw.size))
    assert result.returncode == 1, result.stderr  # finished, with skipped images listed in problems.csv
    assert "Wrote 4 images" in result.stdout and "positive 2, negative 1, without mask 1" in result.stdout
    assert "missing_dicom: 1" in result.stdout and "unlabelled: 1" in result.stdout

    # At the source size, pixels and masks are exactly the source's (the DICOM decode and the RLE union).
    for image_id, expected in siim_raw.masks.items():
        image_path = out / "images" / "train" / f"{image_id}.png"
        source = next(siim_raw.dicom_dir.rglob(f"{image_id}.dcm"))
        np.testing.assert_array_equal(read_png(image_path), read_dicom(source))
        np.testing.assert_array_equal(read_png(out / "masks" / "train" / f"{image_id}.png"), expected * 255)
    assert (out / "images" / "test" / f"{siim_raw.test_id}.png").exists()
    assert not (out / "masks" / "test" / f"{siim_raw.test_id}.png").exists()
    written = {p.stem for p in (out / "images").rglob("*.png")}
    assert siim_raw.unlabelled not in written and siim_raw.missing not in written

    problems = {(row["image_id"], row["reason"], row["action"]) for row in read_csv(out / "problems.csv")}
    assert problems == {
        (siim_raw.unlabelled, "unlabelled", "image skipped"),
        (siim_raw.missing, "missing_dicom", "image skipped"),
    }
    metadata = {row["image_id"]: row for row in read_csv(out / "metadata.csv")}
    assert set(metadata) == set(siim_raw.masks) | {siim_raw.test_id}
    assert metadata["1.2.826.1"]["is_positive"] == "True" and metadata["1.2.826.2"]["is_positive"] == "False"
    assert metadata[siim_raw.test_id]["is_positive"] == "" and metadata[siim_raw.test_id]["split"] == "test"
    assert metadata["1.2.826.1"]["PatientSex"] == "M" and metadata["1.2.826.2"]["ViewPosition"] == "AP"
    assert metadata["1.2.826.1"]["PatientAge"] == "040Y"
    assert json.loads((out / "labels.json").read_text()) == {
        "task": "pneumothorax",
        "names": ["background", "pneumothorax"],
        "multilabel": False,
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temporary folder left


def test_resizing_uses_area_for_images_and_keeps_every_lesion(siim_raw, tmp_path):
    size = siim_raw.size // 4
    prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "out", image_size=size))
    for image_id, source_mask in siim_raw.masks.items():
        image = read_png(tmp_path / "out" / "images" / "train" / f"{image_id}.png")
        source = read_dicom(next(siim_raw.dicom_dir.rglob(f"{image_id}.dcm")))
        np.testing.assert_array_equal(image, cv2.resize(source, (size, size), interpolation=cv2.INTER_AREA))
        mask = read_png(tmp_path / "out" / "masks" / "train" / f"{image_id}.png")
        assert mask.shape == (size, size) and set(np.unique(mask)) <= {0, 255}
        assert mask.any() == source_mask.any()  # the 2x2-pixel lesion of 1.2.826.3 survives a 4x shrink
    tiny = read_png(tmp_path / "out" / "masks" / "train" / "1.2.826.3.png")
    assert (tiny > 0).sum() == 1  # its one 4x4 source block


def test_stage2_csv_spelling(make_siim_raw, tmp_path):
    raw = make_siim_raw(tmp_path / "raw", stage=2, size=64)
    assert raw.csv.read_text().startswith("ImageId,EncodedPixels\n")
    summary = prepare_siim(raw.dicom_dir, raw.csv, PrepareOptions(tmp_path / "out", image_size=64))
    assert (summary.written, summary.positive, summary.negative) == (3, 2, 1)
    np.testing.assert_array_equal(
        read_png(tmp_path / "out" / "masks" / "train" / "1.2.826.1.png"), raw.masks["1.2.826.1"] * 255
    )


@pytest.mark.parametrize("image_id", ["../evil", "a/b", "..", ""])
def test_rejects_image_ids_that_are_not_file_names(siim_raw, tmp_path, image_id):
    siim_raw.csv.write_text(siim_raw.csv.read_text() + f'"{image_id}", 1 2\n')
    with pytest.raises((PrepareError, RLEError), match="ImageId|empty ImageId"):
        prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_rle_and_unreadable_dicom_are_reported(siim_raw, tmp_path):
    text = siim_raw.csv.read_text().replace("1.2.826.2, -1", "1.2.826.2, 5 3 7")
    siim_raw.csv.write_text(text)
    (siim_raw.dicom_dir / "broken").mkdir()
    (siim_raw.dicom_dir / "broken" / "1.2.826.7.dcm").write_bytes(b"not a dicom")
    siim_raw.csv.write_text(siim_raw.csv.read_text() + "1.2.826.7, -1\n")
    summary = prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "out", image_size=32))
    problems = {row["image_id"]: row for row in read_csv(tmp_path / "out" / "problems.csv")}
    assert problems["1.2.826.2"]["reason"] == "bad_rle" and "odd number" in problems["1.2.826.2"]["detail"]
    assert "ImageId 1.2.826.2" in problems["1.2.826.2"]["detail"]
    assert problems["1.2.826.7"]["reason"] == "unreadable_dicom" and "1.2.826.7.dcm" in problems["1.2.826.7"]["detail"]
    assert summary.written == 2 and summary.skipped["bad_rle"] == 1 and summary.skipped["unreadable_dicom"] == 1
