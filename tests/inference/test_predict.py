"""cxrseg predict: PNG/JPEG/DICOM of any size in, masks at the original size, overlays, probabilities, the Kaggle
submission (RLE at 1024²), skipped unreadable inputs, post-processing on by default, multi-label masks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrseg.cli import main
from cxrseg.errors import PredictError
from cxrseg.imageio.dicom import write_dicom
from cxrseg.imageio.images import read_image
from cxrseg.inference.predict import list_inputs, predict
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import LabelSet, unpack_multilabel
from cxrseg.postprocessing.rules import PostProcess
from cxrseg.prepare.rle import rle_decode
from tests.conftest import save_tiny_model

# A real radiograph (NIH ChestX-ray14, 512 x 512) from the shared/ folder beside the checkout; read-only.
NIH_IMAGE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_cxr14_00000001_000.png"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=3)


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    if NIH_IMAGE.exists():
        shutil.copy(NIH_IMAGE, folder / "nih.png")
    else:  # outside this workplace: a stand-in of the same size
        cv2.imwrite(str(folder / "nih.png"), np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8))
    rng = np.random.default_rng(1)
    cv2.imwrite(str(folder / "sub" / "photo.jpg"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    write_dicom(folder / "scan.dcm", rng.integers(0, 256, (1024, 1024), dtype=np.uint8))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("ignored: not an image type")
    return folder


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_predict_writes_masks_at_original_size_and_skips_the_corrupt_input(model_dir, inputs, tmp_path, capsys):
    out, submission = tmp_path / "out", tmp_path / "submission.csv"
    code = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(inputs),
            "--out",
            str(out),
            "--submission",
            str(submission),
            "--save-probabilities",
            "--num-workers",
            "1",
            "--batch-size",
            "2",
        ]
    )
    assert code == 1  # completed, with a skipped input
    printed = capsys.readouterr().out
    assert "Predicted 3 of 4 images" in printed and "corrupt.png" in printed
    problems = read_rows(out / "problems.csv")
    assert problems[0] == ["path", "error"] and len(problems) == 2 and problems[1][0].endswith("corrupt.png")

    segmenter = load_segmenter(model_dir)
    sizes = {"nih": (512, 512), "photo": (90, 120), "scan": (1024, 1024)}
    for image_id, size in sizes.items():
        mask = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        assert mask.shape == size and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        probabilities = np.asarray(Image.open(out / "probabilities" / f"{image_id}.png"))
        image = read_image(next(inputs.rglob(f"{image_id}.*")))
        (probs,) = segmenter.predict([image])  # a batch of one: on a GPU, equal to the batch of two up to ~1e-4
        p = probs[0].numpy()
        decided = np.abs(p - 0.5) > 1e-3
        np.testing.assert_array_equal((mask > 0)[decided], (p >= 0.5)[decided])
        assert np.abs(probabilities.astype(int) - np.round(p * 255)).max() <= 1
        overlay = np.asarray(Image.open(out / "overlays" / f"{image_id}.png"))
        assert overlay.shape == (*size, 3)
        changed = (overlay != np.repeat(image[..., None], 3, 2)).any(2)
        np.testing.assert_array_equal(changed, mask > 0)  # the overlay differs from the image exactly on the mask

    rows = read_rows(submission)
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert [row[0] for row in rows[1:]] == ["nih", "scan", "photo"]  # input order (sorted paths)
    for image_id, rle in rows[1:]:
        mask = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        at_1024 = cv2.resize(mask, (1024, 1024), interpolation=cv2.INTER_NEAREST) > 0
        np.testing.assert_array_equal(rle_decode(rle, 1024, 1024).astype(bool), at_1024)
        assert (rle == "-1") == (not mask.any())
    assert not list(tmp_path.glob(".*.tmp")) and not list(out.glob(".*.tmp"))


def test_postprocess_is_used_by_default_and_can_be_turned_off(model_dir, inputs, tmp_path):
    (inputs / "corrupt.png").unlink()
    keep_nothing = tmp_path / "strict.json"
    PostProcess(top_threshold=1.0, min_area=10**6, bottom_threshold=0.5, image_size=64).save(keep_nothing)
    shutil.copy(keep_nothing, model_dir / "postprocess.json")
    try:
        segmenter = load_segmenter(model_dir)
        summary = predict(segmenter, inputs, tmp_path / "default", submission=tmp_path / "s.csv", num_workers=0)
        assert summary.num_predicted == 3 and summary.num_positive == 0 and not summary.problems
        assert all(row[1] == "-1" for row in read_rows(tmp_path / "s.csv")[1:])
        code = main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--input",
                str(inputs),
                "--out",
                str(tmp_path / "raw"),
                "--no-postprocess",
                "--num-workers",
                "0",
            ]
        )
        assert code == 0
    finally:
        (model_dir / "postprocess.json").unlink()
    raw = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "raw" / "masks").iterdir())]
    assert any(mask.any() for mask in raw)  # the random tiny model predicts something at 0.5
    everything = tmp_path / "loose.json"
    PostProcess(0.0, 0, 0.0, image_size=64).save(everything)
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--input",
                str(inputs / "nih.png"),
                "--out",
                str(tmp_path / "loose"),
                "--postprocess",
                str(everything),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "loose" / "masks" / "nih.png")).min() == 255


def test_multilabel_masks_are_packed_with_labels_json_and_a_legend(tmp_path):
    names = ("Effusion", "Nodule", "Pleural Thickening")
    model_dir = save_tiny_model(tmp_path / "model", LabelSet("custom", names, multilabel=True), seed=1)
    image = np.random.default_rng(2).integers(0, 256, (100, 80), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    segmenter = load_segmenter(model_dir)
    summary = predict(segmenter, tmp_path / "x.png", tmp_path / "out", save_probabilities=True, num_workers=0)
    assert summary.num_predicted == 1
    packed = cv2.imread(str(tmp_path / "out" / "masks" / "x.png"), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16 and packed.shape == (100, 80)
    (probs,) = segmenter.predict([image])
    np.testing.assert_array_equal(unpack_multilabel(packed, 3).transpose(2, 0, 1), (probs >= 0.5).numpy())
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["names"] == list(names)
    assert {p.name for p in (tmp_path / "out" / "probabilities" / "x").iterdir()} == {
        "Effusion.png",
        "Nodule.png",
        "Pleural_Thickening.png",
    }
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "x.png"))
    assert overlay.shape == (100, 80, 3)
    with pytest.raises(PredictError, match="--submission"):
        predict(segmenter, tmp_path / "x.png", tmp_path / "out2", submission=tmp_path / "s.csv")


def test_no_overlays_writes_the_same_masks_and_no_overlay(model_dir, inputs, tmp_path):
    code = main(["predict", "--model", str(model_dir), "--input", str(inputs), "--out", str(tmp_path / "lean"),
                 "--no-overlays", "--num-workers", "0"])  # fmt: skip
    assert code == 1  # the corrupt input, skipped as with overlays
    predict(load_segmenter(model_dir), inputs, tmp_path / "full", num_workers=0)
    assert not (tmp_path / "lean" / "overlays").exists() and any((tmp_path / "full" / "overlays").iterdir())
    masks = sorted(p.name for p in (tmp_path / "full" / "masks").iterdir())
    assert masks == sorted(p.name for p in (tmp_path / "lean" / "masks").iterdir()) and masks
    for name in masks:
        assert (tmp_path / "lean" / "masks" / name).read_bytes() == (tmp_path / "full" / "masks" / name).read_bytes()


def test_submission_is_never_half_written(model_dir, inputs, tmp_path, monkeypatch):
    calls = []

    def failing_encode(mask):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return "-1"

    monkeypatch.setattr("cxrseg.inference.predict.rle_encode", failing_encode)
    with pytest.raises(RuntimeError, match="disk full"):
        predict(load_segmenter(model_dir), inputs, tmp_path / "out", submission=tmp_path / "s.csv", num_workers=0)
    assert not (tmp_path / "s.csv").exists() and not list(tmp_path.glob(".s.csv.*"))


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(PredictError, match="does not exist"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(PredictError, match="holds no"):
        list_inputs(tmp_path / "a")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "same.png").write_bytes(b"")
    with pytest.raises(PredictError, match="Two inputs have the id 'same'"):
        list_inputs(tmp_path)


@pytest.mark.slow
def test_python_m_cxrseg_predict_on_a_real_radiograph(model_dir, tmp_path):
    if not NIH_IMAGE.exists():
        pytest.skip("the NIH sample radiographs are not in this checkout's workplace")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrseg",
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(NIH_IMAGE),
            "--out",
            str(tmp_path / "out"),
            "--tta",
            "hflip",
            "--submission",
            str(tmp_path / "s.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Predicted 1 of 1 images" in result.stdout
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / f"{NIH_IMAGE.stem}.png")).shape == (512, 512)
    assert read_rows(tmp_path / "s.csv")[1][0] == NIH_IMAGE.stem


def test_dicom_seg_for_dicom_inputs_holds_the_masks_and_references_the_source(model_dir, tmp_path):
    import highdicom as hd
    import pydicom
    from pydicom.data import get_testdata_file

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "ct.dcm")  # pydicom's real file
    cv2.imwrite(str(folder / "x.png"), np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(folder), "--out", str(out), "--dicom-seg", "binary"]
    assert main(argv) == 0
    assert [p.name for p in (out / "dicom_seg").iterdir()] == ["ct.dcm"]  # DICOM inputs only
    source = pydicom.dcmread(folder / "ct.dcm", stop_before_pixels=True)
    seg = hd.seg.segread(out / "dicom_seg" / "ct.dcm")
    assert (seg.SegmentationType, seg.FrameOfReferenceUID) == ("BINARY", source.FrameOfReferenceUID)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["pneumothorax"]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID])[0, ..., 0]
    mask = np.asarray(Image.open(out / "masks" / "ct.png"))
    np.testing.assert_array_equal(pixels, (mask > 0).astype(pixels.dtype))


def test_fractional_dicom_seg_of_a_multilabel_model_holds_each_class_probability(tmp_path):
    import highdicom as hd

    names = ("Effusion", "Nodule")
    model_dir = save_tiny_model(tmp_path / "model", LabelSet("custom", names, multilabel=True), seed=1)
    source = write_dicom(tmp_path / "cxr.dcm", np.random.default_rng(2).integers(0, 256, (60, 48), dtype=np.uint8))
    predict(load_segmenter(model_dir), source, tmp_path / "out", save_probabilities=True, dicom_seg="fractional")
    seg = hd.seg.segread(tmp_path / "out" / "dicom_seg" / "cxr.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and [s.SegmentLabel for s in seg.SegmentSequence] == list(names)
    (uid,) = [ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    stored = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid])[0]
    for k, name in enumerate(names):
        saved = np.asarray(Image.open(tmp_path / "out" / "probabilities" / "cxr" / f"{name}.png"))
        np.testing.assert_allclose(stored[..., k] * 255, saved, atol=1.01)  # both round(255 p)
    with pytest.raises(PredictError, match="dicom_seg must be one of"):
        predict(load_segmenter(model_dir), source, tmp_path / "out2", dicom_seg="bits")
