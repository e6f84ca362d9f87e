"""DICOM reading on pydicom's real test files and on SIIM-like files written here."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import MPEG2MPML

from cxrseg.imageio.dicom import (
    DicomError,
    dicom_metadata,
    read_dicom,
    read_dicom_geometry,
    read_dicom_with_metadata,
    write_dicom,
)


def real(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom no longer ships {name} offline"
    return path


def min_max_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def test_ct_with_rescale_follows_modality_lut_then_min_max():
    ds = pydicom.dcmread(real("CT_small.dcm"))
    assert ds.RescaleIntercept == -1024 and ds.pixel_array.dtype == np.int16
    image = read_dicom(real("CT_small.dcm"))
    assert image.dtype == np.uint8 and image.shape == (128, 128)
    np.testing.assert_array_equal(image, min_max_uint8(apply_modality_lut(ds.pixel_array, ds)))


def test_mr_window_is_applied():
    ds = pydicom.dcmread(real("MR_small.dcm"))
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    expected = min_max_uint8(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    np.testing.assert_array_equal(read_dicom(real("MR_small.dcm")), expected)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"]
)
def test_the_same_image_in_other_transfer_syntaxes_reads_the_same(name):
    np.testing.assert_array_equal(read_dicom(real(name)), read_dicom(real("MR_small.dcm")))


def test_8bit_deflated_is_returned_exactly():
    ds = pydicom.dcmread(real("image_dfl.dcm"))
    np.testing.assert_array_equal(read_dicom(real("image_dfl.dcm")), ds.pixel_array)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm"])
def test_compressed_16bit_files_decode(name):
    image = read_dicom(real(name))
    assert image.dtype == np.uint8 and image.shape == (1024, 256) and image.min() == 0 and image.max() == 255


def test_file_without_pixel_data_names_the_file():
    with pytest.raises(DicomError, match=r"rtplan\.dcm: the DICOM file has no pixel data"):
        read_dicom(real("rtplan.dcm"))


def test_geometry_is_read_from_the_header(tmp_path):
    pixels = np.zeros((30, 40), np.uint8)
    assert read_dicom_geometry(write_dicom(tmp_path / "a.dcm", pixels, PixelSpacing=[0.5, 0.8])) == (
        (30, 40),
        (0.5, 0.8),
    )
    assert read_dicom_geometry(write_dicom(tmp_path / "b.dcm", pixels)) == ((30, 40), None)
    for i, spacing in enumerate([[0.5], [0, 0.5], [0.5, -1]]):  # not two positive numbers: unknown
        assert read_dicom_geometry(write_dicom(tmp_path / f"c{i}.dcm", pixels, PixelSpacing=spacing))[1] is None
    ds = pydicom.dcmread(real("CT_small.dcm"))
    assert read_dicom_geometry(real("CT_small.dcm")) == ((128, 128), tuple(float(v) for v in ds.PixelSpacing))
    with pytest.raises(DicomError, match=r"rtplan\.dcm: the DICOM file has no pixel data \(no Rows, Columns"):
        read_dicom_geometry(real("rtplan.dcm"))


def test_unsupported_transfer_syntax_says_what_to_install(tmp_path):
    path = write_dicom(tmp_path / "video.dcm", np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(DicomError, match=r"video\.dcm: cannot decode pixel data \(MPEG2.*pip install"):
        read_dicom(tmp_path / "video.dcm")


def test_not_a_dicom_names_the_file(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(DicomError, match=r"x\.dcm: not a readable DICOM file"):
        read_dicom(tmp_path / "x.dcm")


def test_siim_like_jpeg_round_trip_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    pixels = (128 + 60 * np.sin(xx / 20) + rng.normal(0, 3, (256, 256))).clip(0, 255).astype(np.uint8)
    path = write_dicom(tmp_path / "a.dcm", pixels, PatientSex="F", PatientAge="045Y", ViewPosition="PA")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert (ds.BitsStored, ds.PhotometricInterpretation) == (8, "MONOCHROME2")
    image, metadata = read_dicom_with_metadata(path)
    np.testing.assert_array_equal(image, pixel_array(ds, decoding_plugin="pillow"))  # 8-bit: exactly as decoded
    assert np.abs(image.astype(int) - pixel_array(ds, decoding_plugin="pylibjpeg")).max() <= 1  # the other decoder
    assert np.abs(image.astype(int) - pixels).mean() < 2  # a JPEG at quality 95
    # The encapsulated frame is an ordinary JPEG: Pillow decodes it to (nearly) the same pixels.
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert np.abs(np.asarray(Image.open(io.BytesIO(frame))).astype(int) - image).max() <= 1
    assert metadata == dicom_metadata(pydicom.dcmread(path, stop_before_pixels=True))
    assert {k: metadata[k] for k in ("PatientSex", "PatientAge", "ViewPosition", "Rows")} == {
        "PatientSex": "F",
        "PatientAge": "045Y",
        "ViewPosition": "PA",
        "Rows": "256",
    }
    assert metadata["PatientID"] == ""


def test_uncompressed_8bit_is_exact_and_monochrome1_is_inverted(tmp_path):
    pixels = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom(write_dicom(tmp_path / "a.dcm", pixels, jpeg=False)), pixels)
    inverted = read_dicom(write_dicom(tmp_path / "b.dcm", pixels, jpeg=False, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - pixels)


def test_12bit_with_window(tmp_path):
    pixels = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = write_dicom(tmp_path / "a.dcm", pixels, jpeg=False, BitsStored=12, WindowCenter=1024, WindowWidth=1024)
    image = read_dicom(path)
    # Window [512, 1536]: values below are black, above are white, linear between.
    assert image[pixels <= 512].max() == 0 and image[pixels >= 1536].min() == 255
    inside = (pixels > 600) & (pixels < 1400)
    assert np.all(np.diff(image[inside].astype(int)) >= 0) and 0 < image[inside].mean() < 255
    # MONOCHROME1 12-bit without a window: min-max, then inverted.
    mono1 = read_dicom(write_dicom(tmp_path / "b.dcm", pixels, jpeg=False, BitsStored=12, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - min_max_uint8(pixels))
