"""Scores at the original size (Kaggle's protocol): each image's probabilities resized bilinearly to its stored
mask's size and scored there equal a direct recomputation; the working-size scores stay as they were; a rule
searched at the original size has min_area in original pixels and records it, and is refused at the other size;
out of fold too."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrseg.cli import main
from cxrseg.errors import DataError, ModelLoadError
from cxrseg.evaluation.engine import EvaluationOptions
from cxrseg.evaluation.evaluate import evaluate
from cxrseg.evaluation.metrics import SegmentationMetrics, dice_score
from cxrseg.evaluation.out_of_fold import evaluate_out_of_fold
from cxrseg.evaluation.report import summary_table
from cxrseg.evaluation.rule_search import TripletSearch, search_grid
from cxrseg.evaluation.stream import evaluation_loader, stream_predictions
from cxrseg.inference.cv_folder import fold_dir
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import PNEUMOTHORAX, get_labels
from cxrseg.postprocessing.lookup import load_rule, member_name
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess, scaled_to_shape
from cxrseg.synthetic import make_demo_data, make_multilabel_demo_data
from tests.conftest import save_tiny_model
from tests.evaluation.test_evaluate import intensity_segmenter, level
from tests.training.test_cross_validation import untrained_cv_folder

KEYS = ("dice", "iou", "kaggle_dice", "ap", "best_f1", "best_threshold", "num_images", "num_positive_images")


def write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for folder, array in (("images", image), ("masks", mask * 255)):
        (root / folder / "test").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / "test" / f"{name}.png"), array.astype(np.uint8))


def mixed_size_dataset(root: Path) -> Path:
    """Smooth random images (gray / 255 is the intensity model's probability) stored at sizes other than the
    working 64², one non-square and one at 64², with masks that only partly agree with them; one has an empty
    mask."""
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(96, 96), (80, 120), (128, 128), (64, 64)]):
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (height, width)), (0, 0), 5)
        image = np.interp(noise, (noise.min(), noise.max()), (0, 255)).round()
        mask = np.roll(image > 150, 3, axis=1).astype(np.uint8) if i != 1 else np.zeros((height, width), np.uint8)
        write_pair(root, f"image_{i}", image, mask)
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def working_predictions(segmenter, root: Path, split: str = "test") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """image_id → (probs [1, 64, 64], target [1, 64, 64]) at the working size, as before this option existed."""
    from cxrseg.data.png_layout import index_layout

    rows = index_layout(root, split, segmenter.labels)
    out = {}
    for batch in stream_predictions(segmenter, evaluation_loader(segmenter, rows, batch_size=3)):
        out.update({i: (p, t) for i, p, t in zip(batch.image_ids, batch.probs, batch.target)})
    return out


def upsampled(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The brute-force resize: bilinear, half-pixel centres, clamped to [0, 1] (what predict writes)."""
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False).clamp(0, 1)[0]


def stored_mask(root: Path, image_id: str, split: str = "test") -> np.ndarray:
    return (cv2.imread(str(root / "masks" / split / f"{image_id}.png"), 0) > 0).astype(np.uint8)


def test_original_size_scores_equal_a_direct_recomputation_and_working_size_scores_are_unchanged(tmp_path):
    root = mixed_size_dataset(tmp_path / "data")
    segmenter = intensity_segmenter(tmp_path / "model")
    working = working_predictions(segmenter, root)

    original = evaluate(segmenter, root, "test", tmp_path / "original", batch_size=3)  # the default
    reference = SegmentationMetrics(threshold=0.5)
    expected_rows = []
    for image_id in sorted(working):
        truth = stored_mask(root, image_id)
        probs = upsampled(working[image_id][0], truth.shape)
        reference.update(probs, truth[None])
        predicted = probs[0].numpy() >= 0.5
        expected_rows.append((image_id, int(truth.sum()), int(predicted.sum()), f"{dice_score(predicted, truth):.6f}"))
    metrics, expected = original.metrics, reference.compute()
    for key in KEYS:
        assert metrics[key] == expected[key], key  # to the last digit
    rows = read_csv(tmp_path / "original" / "per_image.csv")
    assert [(r["image_id"], int(r["truth_area"]), int(r["predicted_area"]), r["dice"]) for r in rows] == expected_rows
    assert metrics["kaggle_dice_rule"] == metrics["kaggle_dice"]  # the rule in effect is prob >= 0.5
    assert metrics["score_size"] == "original"
    assert metrics["scored_sizes"] == ["64x64", "80x120", "96x96", "128x128"]
    saved = json.loads((tmp_path / "original" / "metrics.json").read_text())
    assert (saved["score_size"], saved["image_size"]) == ("original", 64)
    assert "scored at the original size (64x64, 80x120, 96x96 and 1 more; working size 64x64)" in summary_table(
        original
    )

    at_working = evaluate(segmenter, root, "test", tmp_path / "working", batch_size=3, score_size="working")
    reference = SegmentationMetrics(threshold=0.5)
    for image_id in sorted(working):
        reference.update(*working[image_id])  # [1, 64, 64]: one image as a batch
    expected = reference.compute()
    for key in KEYS:
        assert at_working.metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    assert at_working.metrics["score_size"] == "working" and at_working.metrics["scored_sizes"] == ["64x64"]
    assert "scored at the working size 64x64" in summary_table(at_working)
    assert at_working.metrics["dice"] != metrics["dice"]  # the two sizes give different numbers on these images
    working_rows = read_csv(tmp_path / "working" / "per_image.csv")
    assert [int(r["truth_area"]) for r in working_rows] == [int(working[i][1].sum()) for i in sorted(working)]

    # The search at the original size needs one size (min_area is in pixels): refused before anything is written.
    with pytest.raises(DataError, match=r"one size .* 4 sizes \(64x64, 80x120, 96x96, 128x128.*--score-size working"):
        evaluate(segmenter, root, "test", tmp_path / "refused", search=True)
    assert not (tmp_path / "refused").exists()


def area_scale_dataset(root: Path) -> Path:
    """128² images built of uniform 2x2 blocks (so the working 64² images are exact), gray / 255 the probability:

    * two positives: a 16x16 truth square at 0.9 (64 px at 64²; bilinearly upsampled, 256 px >= 0.5 at 128²);
    * a negative: a 6x6 false positive at 0.96 (9 px at 64²; 36 px >= 0.5 at 128²), and an empty negative.

    At top 0.5 a perfect rule needs min_area in (9, 64] at 64² and in (36, 256] at 128²: the first of each grid
    (:func:`search_grid`) is 12 at 64², 47 at 128², about four times more pixels. A bottom of 0.2 also keeps the
    upsampled halo (0.225 just outside the square), so at 128² the bottom is 0.3.
    """
    for i, (top, left) in enumerate([(20, 20), (60, 70)]):
        image, mask = np.zeros((128, 128)), np.zeros((128, 128), np.uint8)
        image[top : top + 16, left : left + 16] = level(0.9)
        mask[top : top + 16, left : left + 16] = 1
        write_pair(root, f"positive_{i}", image, mask)
    negative = np.zeros((128, 128))
    negative[90:96, 30:36] = level(0.96)
    write_pair(root, "negative", negative, np.zeros((128, 128), np.uint8))
    write_pair(root, "empty", np.zeros((128, 128)), np.zeros((128, 128), np.uint8))
    return root


def test_a_rule_searched_at_the_original_size_counts_min_area_there_and_is_refused_at_the_working_size(tmp_path):
    root = area_scale_dataset(tmp_path / "data")
    segmenter = intensity_segmenter(tmp_path / "model")
    segmenter.model_dir.mkdir()
    at_working = evaluate(segmenter, root, "test", tmp_path / "working", search=True, score_size="working")
    assert at_working.best_postprocess == PostProcess(0.5, 12, 0.2, image_size=64)
    result = evaluate(segmenter, root, "test", tmp_path / "original", search=True)
    assert result.best_postprocess == PostProcess(0.5, 47, 0.3, image_size=128)  # min_area in 128² pixels
    assert result.metrics["search"]["kaggle_dice"] == 1.0

    # Brute force: the search over the upsampled probabilities, at 128².
    working = working_predictions(segmenter, root)
    search = TripletSearch(*search_grid(128))
    for image_id in sorted(working):
        truth = stored_mask(root, image_id)
        search.update(upsampled(working[image_id][0], truth.shape), truth[None])
    assert search.compute() == result.best_postprocess
    assert search.table() == [{k: v for k, v in row.items() if k != "class"} for row in result.search_table]

    saved = json.loads((segmenter.model_dir / "postprocess.json").read_text())
    assert saved["image_size"] == 128 and saved["min_area"] == 47
    assert saved["provenance"]["score_size"] == "original" and saved["provenance"]["image_size"] == 64

    # The model's rule now (min_area rescaled to the working size on loading, as for predict): scored at the
    # original size with min_area back in 128² pixels; refused at the working size unless the mismatch is allowed.
    segmenter.postprocess = load_rule(segmenter.model_dir / "postprocess.json", PNEUMOTHORAX, 64, "model")
    again = evaluate(segmenter, root, "test", tmp_path / "again")
    assert again.metrics["kaggle_dice_rule"] == 1.0
    with pytest.raises(ModelLoadError, match="tuned on predictions scored at the original size, but this"):
        evaluate(segmenter, root, "test", tmp_path / "refused", score_size="working")
    assert not (tmp_path / "refused").exists()
    allowed = evaluate(segmenter, root, "test", tmp_path / "allowed", score_size="working", rule_mismatch="warn")
    assert allowed.metrics["score_size"] == "working"


def test_out_of_fold_at_the_original_size_equals_the_pooled_upsampled_fold_predictions(tmp_path):
    data = make_demo_data(tmp_path / "data", num_images=10, size=96, seed=3)  # stored at 96², folds work at 64²
    out = tmp_path / "cv"
    folds = untrained_cv_folder(data, out, num_folds=2)
    result = evaluate_out_of_fold(out, data, tmp_path / "oof", EvaluationOptions(batch_size=4, search=True))
    metrics = result.metrics
    assert metrics["score_size"] == "original" and metrics["scored_sizes"] == ["96x96"]

    pooled, search = SegmentationMetrics(threshold=0.5), TripletSearch(*search_grid(96))
    for k, fold in enumerate(folds):
        segmenter = load_segmenter(fold_dir(out, k), device="cpu")
        working = working_predictions(segmenter, data, "train")
        for image_id in fold["val"]:
            truth = stored_mask(data, image_id, "train")[None]
            probs = upsampled(working[image_id][0], truth.shape[1:])
            pooled.update(probs, truth)
            search.update(probs, truth)
    for key, value in pooled.compute().items():
        assert metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert result.best_postprocess == search.compute() and result.best_postprocess.image_size == 96
    rule = json.loads((out / "postprocess.json").read_text())
    assert rule["provenance"]["score_size"] == "original" and rule["provenance"]["kind"] == "out_of_fold"


def test_multilabel_scores_at_the_original_size_per_class(tmp_path):
    """Multi-label (16-bit bit-field masks): each class's planes at the stored 96², as the direct recomputation."""
    labels = get_labels("chestxdet")
    data = make_multilabel_demo_data(tmp_path / "data", num_images=4, size=96, seed=5)
    segmenter = load_segmenter(save_tiny_model(tmp_path / "model", labels), device="cpu")
    metrics = evaluate(segmenter, data, None, tmp_path / "out", batch_size=3).metrics

    names = labels.foreground
    reference = SegmentationMetrics(threshold=0.5, num_classes=len(names), class_names=names)
    for image_id, (probs, _) in sorted(working_predictions(segmenter, data, "train").items()):
        bits = cv2.imread(str(data / "masks" / "train" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        truth = np.stack([(bits >> c) & 1 for c in range(len(names))]).astype(np.uint8)
        reference.update(upsampled(probs, bits.shape)[None], truth[None])
    assert metrics["scored_sizes"] == ["96x96"]
    for key, value in reference.compute().items():
        assert metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_min_area_follows_the_pixel_area_to_any_shape():
    rule = PostProcess(0.7, 100, 0.3, image_size=64)
    assert scaled_to_shape(rule, 128, 128) == PostProcess(0.7, 400, 0.3, image_size=128)
    assert scaled_to_shape(rule, 96, 128) == PostProcess(0.7, 300, 0.3, image_size=None)  # 100 x 96·128 / 64²
    assert scaled_to_shape(PostProcess(0.7, 5, 0.3), 96, 128) == PostProcess(0.7, 5, 0.3)  # size unknown: as it is
    per_class = ClassPostProcess(("a", "b"), (rule, PostProcess(0.5, 10, 0.5, image_size=64)))
    scaled = scaled_to_shape(per_class, 32, 64)
    assert [r.min_area for r in scaled.rules] == [50, 5] and scaled.image_size is None

    # A search over non-square images (one original size) saves min_area at the square of the same pixel area.
    search = TripletSearch((0.5,), (10,), (0.5,))
    search.update(torch.zeros(1, 96, 128), torch.zeros(1, 96, 128, dtype=torch.uint8))
    assert search.compute() == PostProcess(0.5, 10, 0.5, image_size=111)  # 111² ≈ 96·128
    assert scaled_to_shape(search.compute(), 96, 128).min_area == 10


def test_cli_scores_at_the_original_size_by_default_and_refuses_a_rule_tuned_at_the_other_size(tmp_path, capsys):
    data = make_demo_data(tmp_path / "data", num_images=4, size=96, seed=4)
    model = save_tiny_model(tmp_path / "model")
    made = {"tta": "none", "kind": "single", "members": [member_name(model)], "image_size": 64}
    PostProcess(0.5, 40, 0.5, image_size=96, provenance={**made, "score_size": "original"}).save(model)
    evaluate_cli = ["evaluate", "--model", str(model), "--data", str(data), "--num-workers", "0"]

    assert main([*evaluate_cli, "--out", str(tmp_path / "original")]) == 0
    printed = capsys.readouterr().out
    assert "data: 4 images (" in printed  # the whole dataset (the model has no splits.json)
    assert "scored at the original size (96x96; working size 64x64), TTA none" in printed
    assert main([*evaluate_cli, "--out", str(tmp_path / "working"), "--score-size", "working"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    (line,) = [line for line in error.splitlines() if line.startswith("error: ")]
    assert "tuned on predictions scored at the original size, but this evaluation scores at the working" in line
    assert not (tmp_path / "working").exists()
    allowed = [*evaluate_cli, "--out", str(tmp_path / "allowed"), "--score-size", "working", "--allow-rule-mismatch"]
    assert main(allowed) == 0
    assert json.loads((tmp_path / "allowed" / "metrics.json").read_text())["score_size"] == "working"
