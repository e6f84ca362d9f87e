"""Every reader on the files real radiographs and masks come as, one test each, on a real radiograph (the NIH
image the web app ships): palette PNGs read through their palette (JSRT's inverted gray palette included), gray +
alpha, 16-bit, JPEG, DICOM MONOCHROME1; masks by :func:`cxrseg.imageio.images.read_mask`'s one rule. Each reader
also says what it converted (what ``cxrseg prepare folder`` reports per file)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrseg.errors import DataError
from cxrseg.imageio.dicom import write_dicom
from cxrseg.imageio.images import read_image, read_image_converted, read_mask

NIH = Path(__file__).resolve().parents[2] / "src/cxrseg/app/examples/nih_cxr14_00000001_000.png"


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    """A real chest radiograph, uint8 [512, 512]."""
    pixels = np.asarray(Image.open(NIH))
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    return pixels


def test_an_inverted_gray_palette_png_is_read_through_its_palette(tmp_path, radiograph):
    """JSRT-like: the stored indices are 255 - gray, the palette maps index i to gray 255 - i."""
    image = Image.fromarray(255 - radiograph, mode="L").convert("P")  # indices = 255 - gray
    image.putpalette([level for i in range(256) for level in (255 - i,) * 3])
    image.save(tmp_path / "jsrt.png")
    assert Image.open(tmp_path / "jsrt.png").mode == "P"
    pixels, converted = read_image_converted(tmp_path / "jsrt.png")
    np.testing.assert_array_equal(pixels, radiograph)  # the picture, not the indices
    assert converted == "palette → gray through its palette (inverted gray palette)"


def test_gray_plus_alpha_keeps_the_gray(tmp_path, radiograph):
    alpha = np.full_like(radiograph, 255)
    alpha[:40] = 0
    Image.fromarray(np.dstack([radiograph, alpha]), mode="LA").save(tmp_path / "la.png")
    pixels, converted = read_image_converted(tmp_path / "la.png")
    np.testing.assert_array_equal(pixels, radiograph)
    assert converted == "gray + alpha → gray (alpha dropped)"


def test_a_16_bit_png_is_stretched_to_8_bits(tmp_path, radiograph):
    deep = radiograph.astype(np.uint16) * 16 + 100  # a 12-bit detector's range
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    pixels, converted = read_image_converted(tmp_path / "deep.png")
    low, high = int(radiograph.min()), int(radiograph.max())
    expected = np.rint((radiograph.astype(np.float64) - low) * 255 / (high - low)).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert converted == "16/32-bit gray → 8-bit (linear min-max stretch)"


def test_a_jpeg_reads_as_its_gray_pixels(tmp_path, radiograph):
    cv2.imwrite(str(tmp_path / "scan.jpg"), radiograph, [cv2.IMWRITE_JPEG_QUALITY, 100])
    pixels, converted = read_image_converted(tmp_path / "scan.jpg")
    assert pixels.shape == radiograph.shape and np.abs(pixels.astype(int) - radiograph).max() <= 3
    assert converted == ""
    cv2.imwrite(str(tmp_path / "colour.jpg"), np.dstack([radiograph] * 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    pixels, converted = read_image_converted(tmp_path / "colour.jpg")
    assert np.abs(pixels.astype(int) - radiograph).max() <= 3 and "→ gray" in converted


def test_a_monochrome1_dicom_is_inverted(tmp_path, radiograph):
    deep = (255 - radiograph).astype(np.uint16) * 16  # MONOCHROME1: larger is darker, 12 bits stored
    write_dicom(tmp_path / "m1.dcm", deep, jpeg=False, photometric="MONOCHROME1", BitsStored=12)
    pixels, converted = read_image_converted(tmp_path / "m1.dcm")
    low, high = int(radiograph.min()), int(radiograph.max())
    expected = np.rint((radiograph.astype(np.float64) - low) * 255 / (high - low)).astype(np.uint8)
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert converted == (
        "DICOM 12-bit → 8-bit (LUT/window, min-max stretch), MONOCHROME1 → inverted (larger is brighter)"
    )
    write_dicom(tmp_path / "m1_8bit.dcm", 255 - radiograph, jpeg=False, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_image(tmp_path / "m1_8bit.dcm"), radiograph)


def masks_of(tmp_path: Path) -> np.ndarray:
    """Class indices 0/1/2 [40, 60]: background, a lung field, a heart."""
    mask = np.zeros((40, 60), np.uint8)
    mask[5:35, 5:25] = 1
    mask[20:35, 30:50] = 2
    return mask


def test_masks_follow_one_rule(tmp_path):
    classes = masks_of(tmp_path)
    binary = (classes > 0).astype(np.uint8)
    # gray class indices and 16-bit bit fields: as they are
    cv2.imwrite(str(tmp_path / "indices.png"), classes)
    cv2.imwrite(str(tmp_path / "bits.png"), classes.astype(np.uint16) << 3)
    assert read_mask(tmp_path / "indices.png")[1] == ""
    np.testing.assert_array_equal(read_mask(tmp_path / "indices.png")[0], classes)
    bits, _ = read_mask(tmp_path / "bits.png")
    assert bits.dtype == np.uint16 and (bits == classes.astype(np.uint16) << 3).all()
    # a gray palette (a GIF, as SCR's masks; inverted included): the gray levels shown
    inverted = Image.fromarray(binary, mode="L").convert("P")
    inverted.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white, 1 black: the lung is black
    inverted.save(tmp_path / "scr.gif")
    pixels, converted = read_mask(tmp_path / "scr.gif")
    np.testing.assert_array_equal(pixels, np.where(binary == 1, 0, 255))
    assert converted == "palette mask → its gray levels (inverted gray palette)"
    # a coloured palette (VOC style): its indices are the classes
    coloured = Image.fromarray(classes, mode="L").convert("P")
    coloured.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    coloured.save(tmp_path / "voc.png")
    pixels, converted = read_mask(tmp_path / "voc.png")
    np.testing.assert_array_equal(pixels, classes)
    assert converted == "palette mask → its indices (coloured palette)"
    # RGB with equal channels (a gray mask saved as colour) and gray + alpha: the gray
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([binary * 255] * 3))
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png")[0], binary * 255)
    painted = np.dstack([np.zeros_like(binary), binary * 255])  # the mask painted as transparency
    Image.fromarray(painted, mode="LA").save(tmp_path / "alpha.png")
    pixels, converted = read_mask(tmp_path / "alpha.png")
    np.testing.assert_array_equal(pixels, binary * 255)
    assert "alpha channel" in converted
    # colours name no class: an error that says what to save instead
    colour = np.dstack([binary * 255, np.zeros_like(binary), classes * 100])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(DataError, match=r"colour\.png: a RGB mask with colours.*class indices"):
        read_mask(tmp_path / "colour.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(DataError, match="broken.png: not a readable mask file"):
        read_mask(tmp_path / "broken.png")
