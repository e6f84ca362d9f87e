"""`cxrseg prepare chestxdet` on official-format annotations written here, with overlapping regions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cxrseg.errors import PrepareError
from cxrseg.labels import CHESTXDET_CLASSES, unpack_multilabel
from cxrseg.prepare.chestxdet import prepare_chestxdet, split_of_annotation_file
from cxrseg.prepare.writer import PrepareOptions

SIZE = 64


def square(x1: int, y1: int, x2: int, y2: int) -> list[list[int]]:
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def plane(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """What a square polygon covers: pixel centres x1..x2, y1..y2 inclusive, clipped to the image."""
    out = np.zeros((SIZE, SIZE), np.uint8)
    out[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1] = 1
    return out


def record(file_name: str, regions: list[tuple[str, list]]) -> dict:
    boxes = [
        [min(p[0] for p in poly), min(p[1] for p in poly), max(p[0] for p in poly), max(p[1] for p in poly)]
        for _, poly in regions
    ]
    return {
        "file_name": file_name,
        "syms": [n for n, _ in regions],
        "boxes": boxes,
        "polygons": [p for _, p in regions],
    }


@pytest.fixture
def chestxdet_raw(tmp_path):
    images = tmp_path / "raw" / "images"
    (images / "train").mkdir(parents=True)
    (images / "test").mkdir()
    rng = np.random.default_rng(0)
    for name, folder in [("1", "train"), ("2", "train"), ("3", "train"), ("5", "test"), ("6", "train")]:
        cv2.imwrite(str(images / folder / f"{name}.png"), rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    train = [
        record("1.png", [("Effusion", square(10, 10, 40, 40)), ("Atelectasis", square(30, 30, 50, 50))]),
        record(
            "2.png",
            [
                ("Nodule", square(70, 70, 90, 90)),  # wholly outside: dropped, reported
                ("Lung Lesion", square(5, 5, 9, 9)),  # not a ChestX-Det class: dropped, reported
                ("Mass", square(50, -5, 70, 10)),  # partly outside: clipped, reported
                ("Nodule", square(20, 20, 21, 21)),
            ],
        ),
        record("3.png", []),
        record("4.png", [("Effusion", square(1, 1, 5, 5))]),  # no image file
    ]
    test = [record("5.png", [("Pneumothorax", square(0, 0, 63, 20)), ("Effusion", square(0, 10, 63, 30))])]
    (tmp_path / "raw" / "ChestX_Det_train.json").write_text(json.dumps(train))
    (tmp_path / "raw" / "ChestX_Det_test.json").write_text(json.dumps(test))
    return tmp_path / "raw"


def planes_of(path) -> np.ndarray:
    packed = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16
    return unpack_multilabel(packed, len(CHESTXDET_CLASSES)).transpose(2, 0, 1)


def index(name: str) -> int:
    return CHESTXDET_CLASSES.index(name)


def test_cli_writes_multilabel_masks_without_losing_overlaps(chestxdet_raw, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "cxrseg",
        "prepare",
        "chestxdet",
        "--images",
        str(chestxdet_raw / "images"),
        "--annotations",
        str(chestxdet_raw / "ChestX_Det_test.json"),  # order does not matter: names do
        "--annotations",
        str(chestxdet_raw / "ChestX_Det_train.json"),
        "--out",
        str(out),
        "--image-size",
        "64",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # finished, with skipped images listed in problems.csv
    assert "Skipped" in result.stdout and "problems.csv" in result.stdout
    assert "train: 3" in result.stdout and "test: 1" in result.stdout

    first = planes_of(out / "masks" / "train" / "1.png")
    expected = np.zeros_like(first)
    expected[index("Effusion")] = plane(10, 10, 40, 40)
    expected[index("Atelectasis")] = plane(30, 30, 50, 50)
    np.testing.assert_array_equal(first, expected)
    assert first[:, 35, 35].sum() == 2  # the overlap keeps both findings

    second = planes_of(out / "masks" / "train" / "2.png")
    expected = np.zeros_like(second)
    expected[index("Mass")] = plane(50, -5, 70, 10)
    expected[index("Nodule")] = plane(20, 20, 21, 21)
    np.testing.assert_array_equal(second, expected)
    assert not planes_of(out / "masks" / "train" / "3.png").any()
    test = planes_of(out / "masks" / "test" / "5.png")
    assert test[index("Pneumothorax")].sum() == 64 * 21 and test[:, 15, 30].sum() == 2

    image = cv2.imread(str(out / "images" / "train" / "1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(image, cv2.imread(str(chestxdet_raw / "images" / "train" / "1.png"), 0))

    with (out / "problems.csv").open() as handle:
        problems = sorted((row["image_id"], row["reason"], row["action"]) for row in csv.DictReader(handle))
    assert problems == [
        ("2", "polygon_clipped", "region clipped"),
        ("2", "polygon_outside_image", "region dropped"),
        ("2", "unknown_class", "region dropped"),
        ("4", "missing_image", "image skipped"),
        ("6", "unannotated_image", "image skipped"),
    ]
    with (out / "metadata.csv").open() as handle:
        findings = {row["image_id"]: row["findings"] for row in csv.DictReader(handle)}
    assert findings == {"1": "Atelectasis;Effusion", "2": "Mass;Nodule", "3": "", "5": "Effusion;Pneumothorax"}
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {"task": "chestxdet", "names": list(CHESTXDET_CLASSES), "multilabel": True}


def test_shrinking_keeps_small_findings_per_class(chestxdet_raw, tmp_path):
    options = PrepareOptions(tmp_path / "out", image_size=16)
    (tmp_path / "patients.csv").write_text("image_id,PatientID\n1,00000042\n2,00000042\n")
    prepare_chestxdet(
        chestxdet_raw / "images",
        [chestxdet_raw / "ChestX_Det_train.json"],
        options,
        patient_ids=tmp_path / "patients.csv",
    )
    with (tmp_path / "out" / "metadata.csv").open() as handle:
        assert {row["image_id"]: row["PatientID"] for row in csv.DictReader(handle)} == {
            "1": "00000042",
            "2": "00000042",
            "3": "",
        }
    with (tmp_path / "out" / "problems.csv").open() as handle:
        unnamed = [row["image_id"] for row in csv.DictReader(handle) if row["reason"] == "no_patient_id"]
    assert unnamed == ["3"]  # counted, kept as its own patient group
    second = planes_of(tmp_path / "out" / "masks" / "train" / "2.png")
    assert second.shape == (13, 16, 16)
    assert second[index("Nodule")].sum() == 1  # 2x2 source pixels: below half of a 4x4 block, kept anyway
    assert second[index("Mass")].any()
    first = planes_of(tmp_path / "out" / "masks" / "train" / "1.png")
    assert first[:, 9, 9].tolist().count(1) == 2  # overlap survives resizing


def test_strict_and_split_rules(chestxdet_raw, tmp_path):
    with pytest.raises(PrepareError, match="--strict"):
        options = PrepareOptions(tmp_path / "o", strict=True)
        prepare_chestxdet(chestxdet_raw / "images", [chestxdet_raw / "ChestX_Det_train.json"], options)
    assert not (tmp_path / "o").exists()
    assert split_of_annotation_file("ChestX_Det_test.json", 0) == "test"
    assert split_of_annotation_file("ChestX_Det_train.json", 1) == "train"
    assert [split_of_annotation_file("a.json", i) for i in (0, 1)] == ["train", "test"]
    (chestxdet_raw / "bad.json").write_text(json.dumps([{"file_name": "../1.png", "syms": [], "polygons": []}]))
    with pytest.raises(PrepareError, match=r"bad\.json, record 0: ImageId '\.\./1\.png' is not a plain file name"):
        prepare_chestxdet(chestxdet_raw / "images", [chestxdet_raw / "bad.json"], PrepareOptions(tmp_path / "o"))
