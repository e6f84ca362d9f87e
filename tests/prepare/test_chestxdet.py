"""`cxrseg prepare chestxdet` on official-format annotations written here, with overlapping regions."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrseg.cli import main as cli_main
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


# ---------------------------------------------------------------------------------------------- malformed records
# The real ChestX-Det test annotations (Apache-2.0) from the shared/ folder beside the checkout (or beside the folder
# of worktrees holding it); read-only.
SHARED_TEST_FILE = "shared/data/chestxdet/ChestX_Det_test.json.gz"
CHESTXDET_TEST = next(
    (up / SHARED_TEST_FILE for up in Path(__file__).resolve().parents[3:5] if (up / SHARED_TEST_FILE).exists()),
    Path(SHARED_TEST_FILE),
)


def test_real_annotations_in_coco_flat_form_convert_and_malformed_records_are_listed(tmp_path, capsys):
    """Real records: rewritten with COCO-style flat polygons (and one region split into COCO parts) they give the
    same masks as the originals; records with a null field and polygons that are null or have an odd number of
    coordinates are listed in problems.csv (exit 1) naming the file and record, and the other records are written."""
    if not CHESTXDET_TEST.exists():
        pytest.skip(f"{CHESTXDET_TEST} is not here")
    with gzip.open(CHESTXDET_TEST, "rt") as handle:
        records = [r for r in json.load(handle) if len(r["polygons"]) >= 2][:6]
    images = tmp_path / "images"
    images.mkdir()
    for r in records:  # the polygons are in the original 1024 px frame
        cv2.imwrite(str(images / r["file_name"]), np.full((1024, 1024), 128, np.uint8))
    original = tmp_path / "ChestX_Det_test.json"
    original.write_text(json.dumps(records))
    changed = json.loads(json.dumps(records))
    changed[0]["polygons"] = [[c for point in polygon for c in point] for polygon in changed[0]["polygons"]]
    first = [c for point in changed[1]["polygons"][0] for c in point]  # one region in two overlapping COCO parts
    changed[1]["polygons"][0] = [first, first[: len(first) // 2 * 2]]
    changed[2]["syms"] = None
    changed[3]["file_name"] = None
    changed[4]["polygons"][0] = None
    changed[5]["polygons"][1] = [c for point in changed[5]["polygons"][1] for c in point][:-1]
    malformed = tmp_path / "malformed" / "ChestX_Det_test.json"
    malformed.parent.mkdir()
    malformed.write_text(json.dumps(changed))
    for annotation_file, out in ((original, "reference"), (malformed, "converted")):
        argv = ["prepare", "chestxdet", "--images", str(images), "--annotations", str(annotation_file), "--out",
                str(tmp_path / out), "--image-size", "64"]  # fmt: skip
        status = cli_main(argv)
        assert status == (0 if out == "reference" else 1), capsys.readouterr().err
    with open(tmp_path / "converted/problems.csv") as handle:
        rows = [(row["image_id"], row["reason"], row["action"]) for row in csv.DictReader(handle)]
    assert sorted(rows) == sorted([
        (Path(records[2]["file_name"]).stem, "malformed_record", "image skipped"),
        ("record 3", "malformed_record", "image skipped"),
        (Path(records[3]["file_name"]).stem, "unannotated_image", "image skipped"),  # its record names no file
        (Path(records[4]["file_name"]).stem, "malformed_polygon", "region dropped"),
        (Path(records[5]["file_name"]).stem, "malformed_polygon", "region dropped"),
    ])  # fmt: skip
    text = (tmp_path / "converted/problems.csv").read_text()
    assert f"{malformed}, record 2: syms is null" in text and f"{malformed}, record 3: file_name is null" in text
    assert f"{malformed}, record 4: region 0" in text and "odd number (" in text
    for r in records[:2]:  # converted from COCO form: the very masks of the original annotations
        name = f"test/{r['file_name']}"
        np.testing.assert_array_equal(
            planes_of(tmp_path / "converted/masks" / name), planes_of(tmp_path / "reference/masks" / name)
        )
    for r in records[4:]:  # written without the dropped region
        assert (tmp_path / "converted/masks/test" / r["file_name"]).is_file()


def test_a_labels_file_naming_a_class_twice_is_refused_naming_it(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"task": "lesions", "names": ["nodule", "mass", "nodule"], "multilabel": True}))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    argv = ["prepare", "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--labels",
            str(labels), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {labels}: key 'names' names 'nodule' more than once; each class needs one name of its own (its index "
        "is its value in the masks)."
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels.json", "masks"]
