"""`cxrseg prepare folder`: a user's images + masks, with the same validation and reporting as siim."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from cxrseg.data.groups import patient_groups
from cxrseg.errors import DataError, PrepareError
from cxrseg.labels import pack_multilabel
from cxrseg.prepare.folder import prepare_folder
from cxrseg.prepare.writer import PrepareOptions
from tests.prepare.conftest import run_prepare


def write(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def problems_of(out) -> dict[str, str]:
    with (out / "problems.csv").open() as handle:
        return {row["image_id"]: row["reason"] for row in csv.DictReader(handle)}


def test_binary_masks_and_every_kind_of_bad_pair(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    rng = np.random.default_rng(0)
    lesion = np.zeros((32, 32), np.uint8)
    lesion[4:9, 4:9] = 1
    write(images / "a.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    write(masks / "a.png", lesion * 255)  # 0/255
    write(images / "nested" / "b.jpg", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # colour JPEG
    write(masks / "b.png", lesion)  # 0/1
    write(images / "c.png", np.zeros((32, 32), np.uint8))
    write(masks / "c.png", np.zeros((32, 32), np.uint8))  # negative
    write(images / "no_mask.png", np.zeros((32, 32), np.uint8))
    write(masks / "no_image.png", np.zeros((32, 32), np.uint8))
    write(images / "small.png", np.zeros((16, 32), np.uint8))
    write(masks / "small.png", np.zeros((32, 32), np.uint8))
    write(images / "values.png", np.zeros((32, 32), np.uint8))
    write(masks / "values.png", lesion * 128)
    (images / "broken.png").write_bytes(b"not a png")
    write(masks / "broken.png", np.zeros((32, 32), np.uint8))

    out = tmp_path / "out"
    result = run_prepare("folder", "--images", str(images), "--masks", str(masks), "--out", str(out))
    assert result.returncode == 1, result.stderr  # finished; the bad pairs were skipped
    assert "Wrote 3 images" in result.stdout and "positive 2, negative 1" in result.stdout
    for name in ("a", "b"):
        np.testing.assert_array_equal(cv2.imread(str(out / "masks" / "train" / f"{name}.png"), 0), lesion * 255)
    colour = cv2.imread(str(images / "nested" / "b.jpg"))
    np.testing.assert_array_equal(
        cv2.imread(str(out / "images" / "train" / "b.png"), cv2.IMREAD_UNCHANGED),
        cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY),
    )
    assert problems_of(out) == {
        "no_mask": "missing_mask",
        "no_image": "missing_image",
        "small": "size_mismatch",
        "values": "mask_values",
        "broken": "unreadable_image",
    }
    with (out / "problems.csv").open() as handle:
        details = {row["image_id"]: row["detail"] for row in csv.DictReader(handle)}
    assert "values.png: values [0, 128] are outside the label set ({0, 1} or {0, 255})" in details["values"]
    assert json.loads((out / "labels.json").read_text())["task"] == "pneumothorax"

    with pytest.raises(PrepareError, match=r"--strict: 2 problems \(missing_image: 1, missing_mask: 1\)"):
        prepare_folder(images, masks, PrepareOptions(tmp_path / "strict", strict=True))
    assert not (tmp_path / "strict").exists()


def test_class_index_masks_with_a_custom_label_set(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"task": "custom", "names": ["background", "left", "right"], "multilabel": False}))
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6], mask[10:14, 10:14] = 1, 2
    write(tmp_path / "i" / "a.png", np.full((20, 20), 90, np.uint8))
    write(tmp_path / "m" / "a.png", mask)
    write(tmp_path / "i" / "b.png", np.full((20, 20), 90, np.uint8))
    write(tmp_path / "m" / "b.png", mask * 2)  # value 4 is not a class
    summary = prepare_folder(
        tmp_path / "i", tmp_path / "m", PrepareOptions(tmp_path / "out"), labels_file=labels, split="val"
    )
    assert summary.written == 1 and problems_of(tmp_path / "out") == {"b": "mask_values"}
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "masks" / "val" / "a.png"), 0), mask)
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == {
        "task": "custom",
        "names": ["background", "left", "right"],
        "multilabel": False,
    }


def test_multilabel_bit_field_masks_are_resized_per_class(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"task": "custom", "names": ["a", "b", "c"], "multilabel": True}))
    planes = np.zeros((3, 40, 40), np.uint8)
    planes[0, 0:20, 0:20] = 1
    planes[1, 10:30, 10:30] = 1
    planes[2, 33, 33] = 1  # one pixel: survives a 4x shrink
    write(tmp_path / "i" / "x.png", np.full((40, 40), 50, np.uint8))
    write(tmp_path / "m" / "x.png", pack_multilabel(planes))
    prepare_folder(tmp_path / "i", tmp_path / "m", PrepareOptions(tmp_path / "out", image_size=10), labels_file=labels)
    packed = cv2.imread(str(tmp_path / "out" / "masks" / "train" / "x.png"), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16 and packed.shape == (10, 10)
    assert packed[3, 3] == 0b011 and packed[8, 8] == 0b100 and packed[0, 0] == 0b001


def test_bad_labels_file_names_it(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"task": "custom", "names": "lesion"}))
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match=r"labels\.json: key 'names' must be a list"):
        prepare_folder(tmp_path / "i", tmp_path / "m", PrepareOptions(tmp_path / "out"), labels_file=labels)
    assert not (tmp_path / "out").exists()


def test_patient_ids_go_to_metadata_and_group_the_folds(tmp_path):
    for name in ("a", "b", "c"):
        write(tmp_path / "i" / f"{name}.png", np.full((8, 8), 90, np.uint8))
        write(tmp_path / "m" / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "patients.csv").write_text("image_id,PatientID\na,P7\nb,P7\nunused,P9\n")
    out = tmp_path / "out"
    result = run_prepare(
        "folder", "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--out", str(out),
        "--patient-ids", str(tmp_path / "patients.csv"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "metadata.csv").open() as handle:
        assert {row["image_id"]: row["PatientID"] for row in csv.DictReader(handle)} == {"a": "P7", "b": "P7", "c": ""}
    assert patient_groups(out, ["a", "b", "c"])[0] == ["patient:P7", "patient:P7", "image:c"]
    with (out / "problems.csv").open() as handle:
        problems = {(row["image_id"], row["reason"], row["action"]) for row in csv.DictReader(handle)}
    assert problems == {("unused", "patient_row_unmatched", "row ignored"), ("c", "no_patient_id", "image kept")}
    assert "no_patient_id: 1, patient_row_unmatched: 1" in result.stdout  # the summary counts them


def test_patient_ids_match_with_or_without_file_suffixes_and_a_csv_matching_nothing_is_an_error(tmp_path):
    for name in ("a", "b"):
        write(tmp_path / "i" / f"{name}.png", np.full((8, 8), 90, np.uint8))
        write(tmp_path / "m" / f"{name}.png", np.zeros((8, 8), np.uint8))
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("image_id,PatientID\na.png,P7\nb,P8\n")  # file name with and without its suffix
    prepare_folder(tmp_path / "i", tmp_path / "m", PrepareOptions(tmp_path / "out"), patient_ids=csv_path)
    with (tmp_path / "out" / "metadata.csv").open() as handle:
        assert {row["image_id"]: row["PatientID"] for row in csv.DictReader(handle)} == {"a": "P7", "b": "P8"}
    assert not (tmp_path / "out" / "problems.csv").read_text().strip().splitlines()[1:]  # every row matched

    csv_path.write_text("image_id,PatientID\na,P7\na.png,P9\n")
    with pytest.raises(PrepareError, match=r"rows 'a' and 'a\.png' both name image 'a'"):
        prepare_folder(tmp_path / "i", tmp_path / "m", PrepareOptions(tmp_path / "o2"), patient_ids=csv_path)
    csv_path.write_text("image_id,PatientID\nscans/a.dcm.gz,P7\nzzz,P8\n")
    out = tmp_path / "o3"
    result = run_prepare(
        "folder", "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--out", str(out),
        "--patient-ids", str(csv_path),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "patients.csv: none of its 2 image_ids names an image of this run (first: 'scans/a.dcm.gz'" in result.stderr
    assert not out.exists()


def test_real_world_files_are_converted_and_reported_per_file(tmp_path):
    """Palette (inverted gray, as JSRT conversions), 16-bit, JPEG and MONOCHROME1 DICOM images, with masks as a GIF
    with an inverted palette and 0/1 PNGs: each file read by the one rule, and metadata.csv says what was done."""
    from PIL import Image

    from cxrseg.imageio.dicom import write_dicom

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    gray = np.tile(np.linspace(20, 230, 48).astype(np.uint8), (40, 1))
    lung = np.zeros((40, 48), np.uint8)
    lung[5:35, 5:20] = 1
    palette = Image.fromarray(255 - gray, mode="L").convert("P")
    palette.putpalette([level for i in range(256) for level in (255 - i,) * 3])
    palette.save(images / "jsrt.png")
    cv2.imwrite(str(images / "deep.png"), gray.astype(np.uint16) * 16)
    cv2.imwrite(str(images / "photo.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    write_dicom(images / "film.dcm", 255 - gray, jpeg=False, photometric="MONOCHROME1")
    for name in ("jsrt", "deep", "photo"):
        cv2.imwrite(str(masks / f"{name}.png"), lung)  # 0/1
    scr = Image.fromarray(lung, mode="L").convert("P")
    scr.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # lung black on white
    scr.save(masks / "film.gif")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"task": "lungs", "names": ["background", "lung"]}))

    out = tmp_path / "out"
    result = run_prepare(
        "folder", "--images", str(images), "--masks", str(masks), "--labels", str(labels), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote 4 images" in result.stdout and "Converted (per file: metadata.csv, column converted)" in result.stdout
    assert "image: palette → gray through its palette (inverted gray palette): 1" in result.stdout
    with (out / "metadata.csv").open() as handle:
        converted = {row["image_id"]: row["converted"] for row in csv.DictReader(handle)}
    assert converted == {
        "deep": "image: 16/32-bit gray → 8-bit (linear min-max stretch); mask: 0/1 → 0/255",
        "film": "image: DICOM MONOCHROME1 → inverted (larger is brighter); "
        "mask: palette mask → its gray levels (inverted gray palette)",
        "jsrt": "image: palette → gray through its palette (inverted gray palette); mask: 0/1 → 0/255",
        "photo": "mask: 0/1 → 0/255",
    }
    for name in ("jsrt", "film"):
        np.testing.assert_array_equal(cv2.imread(str(out / "images" / "train" / f"{name}.png"), 0), gray)
    np.testing.assert_array_equal(cv2.imread(str(out / "masks" / "train" / "jsrt.png"), 0), lung * 255)
    # the GIF's palette shows the lung black on white: read through it, the lung is 0 and the rest the finding
    np.testing.assert_array_equal(cv2.imread(str(out / "masks" / "train" / "film.png"), 0), (1 - lung) * 255)


def test_masks_named_with_a_suffix_are_matched_to_their_images(tmp_path):
    """Shenzhen's masks are CHNCXR_0001_0_mask.png beside CHNCXR_0001_0.png: --mask-suffix _mask matches them."""
    lung = np.zeros((16, 16), np.uint8)
    lung[2:14, 2:8] = 255
    for name in ("CHNCXR_0001_0", "CHNCXR_0002_1"):
        write(tmp_path / "img" / f"{name}.png", np.full((16, 16), 100, np.uint8))
        write(tmp_path / "mask" / f"{name}_mask.png", lung)
    out = tmp_path / "out"
    result = run_prepare(
        "folder", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "mask"), "--mask-suffix", "_mask",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "masks" / "train").iterdir()) == ["CHNCXR_0001_0.png", "CHNCXR_0002_1.png"]
    np.testing.assert_array_equal(cv2.imread(str(out / "masks" / "train" / "CHNCXR_0002_1.png"), 0), lung)
    unmatched = run_prepare(
        "folder", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "mask"), "--out", str(tmp_path / "x")
    )
    assert unmatched.returncode == 2 and "missing_mask: 2" in unmatched.stderr  # without it: nothing matches
