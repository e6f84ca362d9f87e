"""Pictures: each is a valid PNG of the documented size whose content follows its input; overlays change the
image exactly where the mask is; the marked best-F1 point is the metric's; the visualize subcommands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from cxrseg.cli import main
from cxrseg.data.png_layout import index_layout
from cxrseg.data.splits import make_split
from cxrseg.evaluation.metrics import SegmentationMetrics
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.plots import (
    PRCurve,
    PredictionExample,
    best_f1_point,
    class_colours,
    overlay,
    plot_feature_maps,
    plot_pr_curve,
    plot_prediction_grid,
    plot_training_curves,
    probability_image,
)
from tests.conftest import save_tiny_model


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_overlay_changes_the_image_exactly_where_the_mask_is():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    image[0, 0], image[1, 1] = 0, 255  # extremes also change
    mask = np.zeros((1, 40, 50), np.uint8)
    mask[0, 5:20, 10:30] = 1
    mask[0, 0:2, 0:2] = 1
    out = overlay(image, mask)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    changed = (out != np.repeat(image[..., None], 3, 2)).any(2)
    np.testing.assert_array_equal(changed, mask[0] == 1)
    np.testing.assert_array_equal(out[5, 15], class_colours(1)[0])  # the outline is the class colour
    assert not np.array_equal(out[10, 15], class_colours(1)[0])  # the inside is translucent
    np.testing.assert_array_equal(overlay(image, np.zeros_like(mask)), np.repeat(image[..., None], 3, 2))
    with pytest.raises(ValueError, match="masks"):
        overlay(image, mask[:, :10])


def test_multilabel_overlay_draws_a_legend_of_the_classes_present():
    image = np.full((200, 200), 100, np.uint8)
    masks = np.zeros((3, 200, 200), np.uint8)
    masks[1, 150:190, 150:190] = 1
    with_legend = overlay(image, masks, names=["Effusion", "Nodule", "Mass"])
    without = overlay(image, masks)
    differs = (with_legend != without).any(2)
    assert differs[:40, :120].any() and not differs[100:].any()  # only the top-left corner
    np.testing.assert_array_equal(
        without[170, 170][None],
        np.round(100 * 0.65 + class_colours(3)[1].astype(np.float32) * 0.35).astype(np.uint8)[None],
    )


def random_metrics(seed: int) -> SegmentationMetrics:
    rng = np.random.default_rng(seed)
    truth = (rng.random((4, 32, 32)) < 0.2).astype(np.uint8)
    probs = np.clip(truth * 0.4 + rng.random((4, 32, 32)) * 0.6, 0, 1).astype(np.float32)
    metrics = SegmentationMetrics(num_bins=1000)
    metrics.update(probs, truth)
    return metrics


def test_best_f1_point_is_the_metrics_best_f1_and_the_curve_picture_follows_the_data(tmp_path):
    metrics = random_metrics(0)
    values = metrics.compute()
    curve = PRCurve("pneumothorax", *metrics.pr_curve(), values["ap"])
    f1, _, _, threshold = best_f1_point(curve)
    assert f1 == pytest.approx(values["best_f1"]) and threshold == pytest.approx(values["best_threshold"])
    first = pixels(plot_pr_curve([curve], tmp_path / "a.png"))
    other = random_metrics(1)
    second = pixels(
        plot_pr_curve([PRCurve("pneumothorax", *other.pr_curve(), other.compute()["ap"])], tmp_path / "b.png")
    )
    assert first.shape == second.shape == (640, 800, 3)
    assert (first != second).any()


LOG = [
    {"loss": 1.2, "step": 10},
    {"loss": 0.9, "step": 20},
    {"eval_loss": 0.8, "eval_dice": 0.3, "eval_kaggle_dice": 0.5, "eval_ap": 0.4, "step": 20},
    {"loss": 0.7, "step": 30},
    {"eval_loss": 0.6, "eval_dice": 0.5, "eval_kaggle_dice": 0.7, "eval_ap": 0.6, "eval_best_f1": 0.5, "step": 40},
    {"train_runtime": 12.0, "train_loss": 0.9, "step": 40},
]


def test_training_curves_from_the_log_history(tmp_path):
    first = pixels(plot_training_curves(LOG, tmp_path / "a.png"))
    assert first.shape == (400, 1200, 3)
    changed = [dict(row) for row in LOG]
    changed[4]["eval_dice"] = 0.9
    second = pixels(plot_training_curves(changed, tmp_path / "b.png"))
    differs = (first != second).any(2)
    assert differs[:, 400:800].any() and not differs[:, 800:].any()  # only the Dice panel moved
    with pytest.raises(ValueError, match="no loss or evaluation"):
        plot_training_curves([{"train_runtime": 1.0, "step": 1}], tmp_path / "c.png")


def test_cli_curves_reads_trainer_state(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": LOG}))
    assert main(["visualize", "curves", "--model", str(tmp_path)]) == 0
    assert pixels(tmp_path / "training_curves.png").shape == (400, 1200, 3)
    assert main(["visualize", "curves", "--model", str(tmp_path / "missing")]) == 2


def example(seed: int, category: str) -> PredictionExample:
    rng = np.random.default_rng(seed)
    truth = np.zeros((1, 32, 32), np.uint8)
    truth[0, 8:20, 8:20] = 1
    probs = rng.random((1, 32, 32)).astype(np.float32)
    return PredictionExample(
        f"img{seed}",
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
        truth,
        probs,
        (probs >= 0.5).astype(np.uint8),
        0.42,
        category,
    )


def test_prediction_grid_has_one_row_per_example(tmp_path):
    first = pixels(
        plot_prediction_grid([example(0, "true positive"), example(1, "miss")], tmp_path / "a.png", ["pneumothorax"])
    )
    assert first.shape == (2 * 160 + 60, 640, 3)
    second = pixels(
        plot_prediction_grid([example(0, "true positive"), example(2, "miss")], tmp_path / "b.png", ["pneumothorax"])
    )
    differs = (first != second).any(2)
    assert differs[220:].any() and not differs[60:200].any()  # the second row changed, the first did not
    with pytest.raises(ValueError, match="at least one"):
        plot_prediction_grid([], tmp_path / "c.png", ["pneumothorax"])


def test_feature_map_picture_size_and_content(tmp_path):
    rng = np.random.default_rng(0)
    features = [("Swin stage1", rng.random((8, 16, 16))), ("UperNet fused", rng.random((4, 16, 16)))]
    image = np.zeros((64, 64), np.uint8)
    first = pixels(plot_feature_maps(image, features, np.zeros((1, 64, 64)), tmp_path / "a.png", top=3))
    assert first.shape == (round(80 * (1.6 * 3 + 0.4)), round(80 * 1.6 * 4), 3)
    features[1] = ("UperNet fused", rng.random((4, 16, 16)))
    second = pixels(plot_feature_maps(image, features, np.zeros((1, 64, 64)), tmp_path / "b.png", top=3))
    differs = (first != second).any(2)
    assert differs[-128:].any() and not differs[40:200].any()  # only the last layer's row changed


def test_cli_visualize_predictions_and_features(tmp_path, demo_root):
    index = index_layout(demo_root, "train", PNEUMOTHORAX)
    split = make_split([r.image_id for r in index], [r.is_positive for r in index], 0.25, 0)
    model_dir = save_tiny_model(tmp_path / "model", splits=split)
    assert (
        main(
            [
                "visualize",
                "predictions",
                "--model",
                str(model_dir),
                "--data",
                str(demo_root),
                "--n",
                "4",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert pixels(model_dir / "predictions_val.png").shape == (4 * 160 + 60, 640, 3)
    assert (
        main(
            [
                "visualize",
                "features",
                "--model",
                str(model_dir),
                "--image",
                str(next((demo_root / "images" / "train").iterdir())),
                "--out",
                str(tmp_path / "f.png"),
                "--top",
                "4",
            ]
        )
        == 0
    )
    assert pixels(tmp_path / "f.png").shape == (round(80 * (1.6 * 11 + 0.4)), round(80 * 1.6 * 5), 3)
    assert main(["visualize", "features", "--model", str(model_dir), "--image", str(tmp_path / "none.png")]) == 2


def test_probability_image_colours_the_highest_probability_of_any_class():
    probs = np.zeros((2, 2, 3), np.float32)
    probs[0, 0, 0], probs[1, 0, 0], probs[1, 1, 2] = 0.2, 0.7, 1.0
    picture = probability_image(probs)
    magma = colormaps["magma"]
    assert picture.dtype == np.uint8 and picture.shape == (2, 3, 3)
    for (y, x), p in {(0, 0): 0.7, (1, 2): 1.0, (0, 1): 0.0}.items():
        np.testing.assert_array_equal(picture[y, x], magma(p, bytes=True)[:3])
