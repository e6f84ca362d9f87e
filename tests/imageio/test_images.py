"""cxrseg.imageio.images: the one reader (files and decoded images → uint8 gray) and the one atomic PNG writer."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import cxrseg.files
import cxrseg.imageio.images
from cxrseg.errors import DataError, DicomError
from cxrseg.imageio.dicom import read_dicom, write_dicom
from cxrseg.imageio.images import read_image, read_image_geometry, write_png
from cxrseg.imageio.pixels import stretch_to_uint8, to_gray


def linear_min_max(values: np.ndarray) -> np.ndarray:
    """The documented 16-bit rule, written out: rint((x - min) * 255 / (max - min))."""
    values = values.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def test_read_image_reads_png_jpeg_dicom_and_names_a_corrupt_file(tmp_path):
    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))  # 30 x 50
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 200)  # 16-bit
    cv2.imwrite(str(tmp_path / "colour.jpg"), np.dstack([gray] * 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    write_dicom(tmp_path / "radiograph.dcm", gray, jpeg=False)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "radiograph.dcm"), gray)
    assert np.abs(read_image(tmp_path / "colour.jpg").astype(int) - gray).max() <= 2
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep.shape == (30, 50) and deep.min() == 0 and deep.max() == 255
    ct = read_image(get_testdata_file("CT_small.dcm"))  # 16-bit, rescaled
    assert ct.dtype == np.uint8 and ct.shape == (128, 128)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png"):
        read_image(tmp_path / "broken.png")


def test_sixteen_bit_png_dicom_and_array_give_the_same_uint8(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(300, 4000, (24, 40), dtype=np.uint16)  # a 12-bit range stored in 16 bits
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    write_dicom(tmp_path / "deep.dcm", deep, jpeg=False)
    expected = linear_min_max(deep)
    assert expected.min() == 0 and expected.max() == 255
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.tif"), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.dcm"), expected)
    np.testing.assert_array_equal(read_dicom(tmp_path / "deep.dcm"), expected)
    np.testing.assert_array_equal(to_gray(deep), expected)
    np.testing.assert_array_equal(to_gray(Image.open(tmp_path / "deep.png")), expected)  # a datasets.Image row
    np.testing.assert_array_equal(stretch_to_uint8(deep.astype(np.float32) / 7), expected)  # any real dtype


def test_a_constant_image_gives_zero(tmp_path):
    flat = np.full((8, 12), 1234, np.uint16)
    cv2.imwrite(str(tmp_path / "flat.png"), flat)
    write_dicom(tmp_path / "flat.dcm", flat, jpeg=False)
    for image in (read_image(tmp_path / "flat.png"), read_image(tmp_path / "flat.dcm"), to_gray(flat)):
        assert image.dtype == np.uint8 and image.shape == (8, 12) and not image.any()


def test_eight_bit_gray_is_kept_exactly():
    gray = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(to_gray(gray), gray)
    np.testing.assert_array_equal(to_gray(Image.fromarray(gray)), gray)


def test_colour_becomes_luma_whatever_the_channels():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    luma = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    expected = to_gray(rgb)
    assert expected.dtype == np.uint8 and np.abs(expected - luma).max() <= 1  # OpenCV's fixed point
    rgba = np.dstack([rgb, rng.integers(0, 256, (10, 14), dtype=np.uint8)])
    np.testing.assert_array_equal(to_gray(rgba), expected)  # alpha is dropped
    np.testing.assert_array_equal(to_gray(Image.fromarray(rgb)), expected)
    np.testing.assert_array_equal(to_gray(Image.fromarray(rgba, "RGBA")), expected)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(to_gray(np.dstack([gray, rgb[..., 1]])), gray)  # LA: the L channel
    np.testing.assert_array_equal(to_gray(Image.fromarray(np.dstack([gray, rgb[..., 1]]), "LA")), gray)
    palette = Image.fromarray(rgb).convert("P")  # indices into a palette: expanded to RGB first
    np.testing.assert_array_equal(to_gray(palette), to_gray(np.asarray(palette.convert("RGB"))))


def test_colour_files_and_colour_dicoms_follow_the_same_rule(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "colour.png"), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "colour.png"), to_gray(rgb))
    path = get_testdata_file("SC_rgb_rle.dcm", download=False)
    assert path is not None, "pydicom no longer ships SC_rgb_rle.dcm offline"
    np.testing.assert_array_equal(read_dicom(path), to_gray(pydicom.dcmread(path).pixel_array))


def test_unreadable_files_raise_an_error_naming_the_path(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png: not a readable image file"):
        read_image(tmp_path / "missing.png")
    smooth = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8), (9, 9), 3)
    cv2.imwrite(str(tmp_path / "whole.jpg"), smooth)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated: refused, not filled in
    with pytest.raises(DataError, match=r"cut\.jpg: not a readable image file"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DicomError, match=r"bad\.dcm"):
        read_image(tmp_path / "bad.dcm")


@pytest.mark.parametrize(
    "pixels",
    [
        np.arange(60, dtype=np.uint8).reshape(6, 10),
        (np.arange(60, dtype=np.uint16) * 1000).reshape(6, 10),
        np.random.default_rng(5).integers(0, 256, (6, 10, 3), dtype=np.uint8),
    ],
    ids=["uint8", "uint16", "rgb"],
)
def test_write_png_round_trips(tmp_path, pixels):
    path = write_png(tmp_path / "sub" / "x.png", pixels)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(stored[..., ::-1] if pixels.ndim == 3 else stored, pixels)
    assert stored.dtype == pixels.dtype
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.float64), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8)],
    ids=["float", "two-channels", "empty"],
)
def test_write_png_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path, pixels):
    with pytest.raises(ValueError, match="write_png: expected"):
        write_png(tmp_path / "x.png", pixels)
    assert leftovers(tmp_path) == []


def test_write_png_failing_encoder_or_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    (tmp_path / "kept.png").write_bytes(b"the user's file")
    monkeypatch.setattr(cxrseg.imageio.images.cv2, "imencode", lambda *args: (False, None))
    with pytest.raises(OSError, match=r"Could not encode .*new\.png"):
        write_png(tmp_path / "new.png", np.zeros((4, 4), np.uint8))
    monkeypatch.undo()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(cxrseg.files.os, "replace", failing_replace)
    for name in ("new.png", "kept.png"):
        with pytest.raises(OSError, match="disk full"):
            write_png(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert leftovers(tmp_path) == ["kept.png"] and (tmp_path / "kept.png").read_bytes() == b"the user's file"


def test_geometry_comes_from_the_header_without_decoding(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((30, 50), np.uint16))
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.zeros((20, 10, 3), np.uint8))
    write_dicom(tmp_path / "scan.dcm", np.zeros((40, 60), np.uint8), PixelSpacing=[0.2, 0.3])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    assert read_image_geometry(tmp_path / "wide.png") == ((30, 50), None)
    assert read_image_geometry(tmp_path / "photo.jpg") == ((20, 10), None)
    assert read_image_geometry(tmp_path / "scan.dcm") == ((40, 60), (0.2, 0.3))
    with pytest.raises(DataError, match="broken.png: not a readable image file"):
        read_image_geometry(tmp_path / "broken.png")


def test_write_png_filters_every_row_as_up(tmp_path):
    """PNG_PARAMS ask for the "up" filter (type 2) on every row, instead of libpng's slower per-row search."""
    pixels = np.random.default_rng(6).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    data = write_png(tmp_path / "x.png", pixels).read_bytes()
    chunks, offset = [], 8  # after the PNG signature: length, type, data, CRC
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row_bytes = 1 + 9 * 3  # filter byte, then RGB samples
    assert [raw[row * row_bytes] for row in range(7)] == [2] * 7
