"""cxrseg.app.findings: what the web app shows of one radiograph (presence, score, area in pixels or cm²) follows its
definitions, on a stand-in model of known output and on a real tiny model; inputs the app refuses name the file."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pydicom
import pytest

import cxrseg.app.findings
from cxrseg.app.findings import Radiograph, area_cm2, read_radiograph, segment_image, summarise_findings
from cxrseg.errors import DataError, DicomError
from cxrseg.imageio.dicom import write_dicom
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.postprocessing.rules import PostProcess
from cxrseg.synthetic import synthetic_multilabel_radiograph, synthetic_radiograph
from cxrseg.synthetic.demo_data import EXAMPLE_PIXEL_SPACING_MM, write_example_radiographs
from tests.conftest import save_tiny_model
from tests.evaluation.test_evaluate import intensity_segmenter


def test_area_in_cm2_is_pixels_times_the_pixel_area():
    assert area_cm2(250, (0.5, 0.8)) == pytest.approx(1.0)  # 250 px x 0.4 mm² = 100 mm²
    assert area_cm2(0, (0.14, 0.14)) == 0.0


def test_summary_per_class():
    masks = np.zeros((2, 4, 5), np.uint8)
    masks[0, :2, :3] = 1  # 6 px
    findings = summarise_findings(("Effusion", "Mass"), [0.9, 0.2], masks, (1.0, 2.0))
    assert [(f.name, f.present, f.score, f.area_pixels) for f in findings] == [
        ("Effusion", True, 0.9, 6),
        ("Mass", False, 0.2, 0),
    ]
    assert [f.area_cm2 for f in findings] == [pytest.approx(0.12), 0.0]
    assert summarise_findings(("Effusion", "Mass"), [0.9, 0.2], masks)[0].area_cm2 is None
    with pytest.raises(ValueError, match="2 names, 1 scores"):
        summarise_findings(("Effusion", "Mass"), [0.9], masks)


def test_segment_image_follows_the_definitions_on_a_stand_in_model(tmp_path):
    """Probability = gray level / 255 at the working size (64²), so the expected numbers are written by hand."""
    image = np.full((128, 96), 25, np.uint8)  # probability 0.1
    image[20:60, 10:50] = 204  # a block at probability 0.8 ...
    image[30:40, 20:30] = 242  # ... with a core at 0.95
    segmenter = intensity_segmenter(tmp_path / "model")
    working = segmenter.preprocessor.resize(image)[0]  # what the model sees (INTER_AREA to 64 x 64)

    result = segment_image(segmenter, Radiograph("x.png", image, (0.5, 0.5)))
    [finding] = result.findings
    assert finding.score == pytest.approx(working.max() / 255, abs=1e-6) and finding.score > 0.94
    assert result.probs.shape == result.masks.shape == (1, 128, 96)
    np.testing.assert_array_equal(result.masks, result.probs >= 0.5)  # no postprocess.json: prob >= 0.5
    block = np.zeros((128, 96), bool)
    block[20:60, 10:50] = True
    assert (result.masks[0] != block).sum() < 0.05 * block.sum()  # the block, up to the resizing at its edges
    assert finding.present and finding.area_pixels == result.masks.sum()
    assert finding.area_cm2 == pytest.approx(finding.area_pixels * 0.25 / 100)

    # postprocess.json applies unless raw_threshold; the score does not depend on the mask rule
    strict = dataclasses.replace(segmenter, postprocess=PostProcess(0.9, 4, 0.9, image_size=64))
    core = segment_image(strict, Radiograph("x.png", image))
    assert core.findings[0].present and core.findings[0].area_cm2 is None
    np.testing.assert_array_equal(core.masks, result.probs >= 0.9)
    assert core.findings[0].score == finding.score
    raw = segment_image(strict, Radiograph("x.png", image), raw_threshold=True)
    np.testing.assert_array_equal(raw.masks, result.masks)
    dropped = dataclasses.replace(segmenter, postprocess=PostProcess(0.9, 1000, 0.5, image_size=64))
    assert not segment_image(dropped, Radiograph("x.png", image)).findings[0].present


def test_segment_image_gives_what_the_model_computes(tmp_path):
    segmenter = load_segmenter(save_tiny_model(tmp_path / "model", seed=5), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (90, 70), dtype=np.uint8)
    result = segment_image(segmenter, Radiograph("x.png", image), tta="hflip")
    probs = segmenter.probabilities(segmenter.preprocessor(image).unsqueeze(0), "hflip")[0]
    expected = segmenter.predict([image], tta="hflip")[0]
    np.testing.assert_allclose(result.probs, expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(result.masks, segmenter.masks(probs, expected))
    assert result.findings[0].score == pytest.approx(float(probs.max()), abs=1e-6)


def test_a_multilabel_model_reports_every_class(tmp_path):
    from cxrseg.labels import TASKS

    labels = TASKS["chestxdet"]
    segmenter = load_segmenter(save_tiny_model(tmp_path / "model", labels=labels), device="cpu")
    result = segment_image(segmenter, Radiograph("x.png", np.zeros((64, 64), np.uint8)))
    assert [f.name for f in result.findings] == list(labels.foreground) and result.masks.shape == (13, 64, 64)


def test_read_radiograph_png_and_dicom_with_pixel_spacing(tmp_path):
    gray = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (30, 1))
    cv2.imwrite(str(tmp_path / "a.png"), gray)
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 250)  # 16-bit: the min-max stretch
    write_dicom(tmp_path / "b.dcm", gray, jpeg=False, PixelSpacing=[0.7, 0.6])
    png = read_radiograph(tmp_path / "a.png")
    assert png.name == "a.png" and png.pixel_spacing_mm is None
    np.testing.assert_array_equal(png.image, gray)
    deep = read_radiograph(tmp_path / "deep.png").image
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255
    dicom = read_radiograph(tmp_path / "b.dcm")
    assert dicom.pixel_spacing_mm == (0.7, 0.6)
    np.testing.assert_array_equal(dicom.image, gray)


def test_read_radiograph_refuses_a_huge_image_before_decoding_it(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((3000, 2500), np.uint8))  # 7.5 MP
    monkeypatch.setattr(cxrseg.app.findings, "read_image", lambda path: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"huge\.png: 2500 x 3000 pixels \(7\.5 megapixels\) is larger than the 5 "):
        read_radiograph(tmp_path / "huge.png", max_megapixels=5)


def test_read_radiograph_names_the_file_it_cannot_use(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match=r"corrupt\.png: not a readable image file"):
        read_radiograph(tmp_path / "corrupt.png")
    path = write_dicom(tmp_path / "empty.dcm", np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"empty\.dcm: the DICOM file has no pixel data"):
        read_radiograph(path)


@pytest.mark.parametrize("multilabel", [False, True])
def test_example_radiographs_have_findings_and_a_pixel_spacing(tmp_path, multilabel):
    png, dicom = write_example_radiographs(tmp_path, multilabel=multilabel, size=64)
    assert read_radiograph(dicom).pixel_spacing_mm == (EXAMPLE_PIXEL_SPACING_MM, EXAMPLE_PIXEL_SPACING_MM)
    image = read_radiograph(png).image
    if not multilabel:
        np.testing.assert_array_equal(image, synthetic_radiograph(1, 64, positive=True)[0])
    else:  # drawn from the first of seeds 1, 1001, ... whose image holds at least two findings
        seed = next(s for s in range(1, 100_000, 1000) if (synthetic_multilabel_radiograph(s, 64)[0] == image).all())
        assert synthetic_multilabel_radiograph(seed, 64)[1].any((1, 2)).sum() >= 2
