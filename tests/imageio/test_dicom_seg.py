"""DICOM SEG output, read back with highdicom and pydicom: the mask, the source's patient, study and frame of
reference, the referenced instance, the segments' labels and codes, binary and fractional."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cxrseg.errors import DicomError
from cxrseg.imageio.dicom import write_dicom
from cxrseg.imageio.dicom_seg import LOCAL_SCHEME, MAX_FRACTIONAL_VALUE, segment_type, write_dicom_seg

NAMES = ("Pneumothorax", "Diffuse Nodule")  # a SNOMED CT concept in pydicom's dictionary, and one without


def planes_for(shape: tuple[int, int]) -> np.ndarray:
    """Two different masks [2, H, W]: a rectangle and a disc."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    rectangle = (yy > shape[0] // 4) & (yy < shape[0] // 2) & (xx > 5) & (xx < shape[1] - 9)
    disc = (yy - shape[0] * 0.7) ** 2 + (xx - shape[1] * 0.5) ** 2 < (shape[0] / 6) ** 2
    return np.stack([rectangle, disc]).astype(np.uint8)


def read_back(path, source: pydicom.Dataset) -> np.ndarray:
    """The SEG's segments [H, W, K] for ``source``, as highdicom reads them (indexed by the source instance)."""
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID])
    return pixels[0]


def test_binary_seg_of_a_real_dicom_references_its_source(tmp_path):
    source_path = get_testdata_file("CT_small.dcm", download=False)
    source = pydicom.dcmread(source_path)
    planes = planes_for((source.Rows, source.Columns))
    path = write_dicom_seg(source_path, tmp_path / "seg.dcm", planes, NAMES, task="chestxdet", model_name="me/m")
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert (seg.Modality, seg.SegmentationType, seg.NumberOfFrames) == ("SEG", "BINARY", 2)
    # The source's patient, study and frame of reference; a new series; the source instance referenced.
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert seg[keyword].value == source[keyword].value, keyword
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (instance,) = series.ReferencedInstanceSequence
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    # Geometry: the source's grid and spacing; the masks exactly.
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    np.testing.assert_array_equal(read_back(path, source), np.moveaxis(planes, 0, -1))
    # Segments: the class names; SNOMED CT where pydicom's dictionary has the class, else the local scheme.
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == list(NAMES)
    assert [s.SegmentAlgorithmType for s in segments] == ["AUTOMATIC", "AUTOMATIC"]
    codes = [
        (c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)
        for s in segments
        for c in s.SegmentedPropertyTypeCodeSequence
    ]
    assert codes == [("36118008", "SCT", "Pneumothorax"), ("chestxdet-1", LOCAL_SCHEME, "Diffuse Nodule")]
    assert {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in segments} == {"49755003"}
    assert "me/m" in seg.ManufacturerModelName and "research use only" in seg.SeriesDescription


def test_fractional_seg_of_a_projection_radiograph(tmp_path):
    # A SIIM-like file: secondary capture, no patient or study attributes, pixel spacing without a frame of reference.
    rng = np.random.default_rng(0)
    source_path = write_dicom(
        tmp_path / "cxr.dcm", rng.integers(0, 255, (48, 40), dtype=np.uint8), PixelSpacing=[0.2, 0.2]
    )
    source = pydicom.dcmread(source_path)
    probs = rng.random((1, 48, 40)).astype(np.float32)
    path = write_dicom_seg(
        source_path, tmp_path / "seg.dcm", probs, ("pneumothorax",), task="pneumothorax", fractional=True
    )
    seg = pydicom.dcmread(path)
    assert (seg.SegmentationType, seg.SegmentationFractionalType) == ("FRACTIONAL", "PROBABILITY")
    assert seg.MaximumFractionalValue == MAX_FRACTIONAL_VALUE and "FrameOfReferenceUID" not in seg
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == ""
    stored = read_back(path, source)[..., 0]
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, np.round(probs[0] * 255) / 255, atol=1e-6)


def test_planes_that_do_not_fit_the_image_name_the_file(tmp_path):
    source_path = write_dicom(tmp_path / "cxr.dcm", np.zeros((20, 30), np.uint8))
    with pytest.raises(DicomError, match=r"cxr\.dcm: the prediction's planes \(1, 20, 20\) do not fit"):
        write_dicom_seg(
            source_path, tmp_path / "seg.dcm", np.zeros((1, 20, 20)), ("pneumothorax",), task="pneumothorax"
        )
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Pneumothorax", ("36118008", "SCT", "Pneumothorax")),
        ("pneumothorax", ("36118008", "SCT", "Pneumothorax")),
        ("Effusion", ("60046008", "SCT", "Pleural effusion")),  # ChestX-Det's Effusion is pleural
        ("Nodule", ("27925004", "SCT", "Nodule")),
        ("Pleural Thickening", ("chestxdet-11", LOCAL_SCHEME, "Pleural Thickening")),
    ],
)
def test_segment_types(name, code):
    concept = segment_type("chestxdet", 11, name)
    assert (concept.value, concept.scheme_designator, concept.meaning) == code
