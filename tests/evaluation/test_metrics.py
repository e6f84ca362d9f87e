import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, precision_recall_curve

from cxrseg.evaluation.metrics import SegmentationMetrics, dice_from_counts, dice_score
from cxrseg.labels import IGNORE_INDEX


def random_batch(rng: np.random.Generator, shape=(4, 32, 32), prevalence=0.2, signal=0.4):
    """Probabilities that are informative but imperfect, and 0/1 targets."""
    target = (rng.random(shape) < prevalence).astype(np.int64)
    probs = np.clip(signal * target + (1 - signal) * rng.random(shape), 0, 1).astype(np.float32)
    return probs, target


def metrics_of(probs, target, **kwargs) -> dict:
    metrics = SegmentationMetrics(**kwargs)
    metrics.update(probs, target)
    return metrics.compute()


# ---------------------------------------------------------------- dice_score


def test_dice_score_definition():
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :4] = 1  # 4 pixels
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :2] = 1
    pred[1, :2] = 1  # 4 pixels, 2 overlapping
    assert dice_score(pred, truth) == pytest.approx(2 * 2 / (4 + 4))
    assert dice_score(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert dice_score(pred, np.zeros((4, 4))) == 0.0
    assert dice_score(np.zeros((4, 4)), truth) == 0.0
    ignored = truth.copy()
    ignored[1, :] = IGNORE_INDEX  # drops the prediction's non-overlapping pixels
    assert dice_score(pred, ignored) == pytest.approx(2 * 2 / (2 + 4))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        dice_score(pred, truth * 3)


def test_dice_from_counts_vectorised():
    np.testing.assert_allclose(dice_from_counts([0, 2, 0], [0, 4, 3], [0, 4, 0]), [1.0, 0.5, 0.0])


# ---------------------------------------------------------------- hand-made cases


def test_perfect_prediction():
    target = np.zeros((3, 8, 8), np.int64)
    target[0, 2:5, 2:5] = 1
    target[1, :, :4] = 1  # image 2 is empty
    probs = target.astype(np.float32)
    results = metrics_of(probs, target)
    for key in ("dice", "iou", "kaggle_dice", "ap", "best_f1"):
        assert results[key] == pytest.approx(1.0), key
    assert results["num_images"] == 3
    assert results["num_positive_images"] == 2


def test_empty_images_and_false_positive():
    target = np.zeros((2, 8, 8), np.int64)
    probs = np.zeros((2, 8, 8), np.float32)
    assert metrics_of(probs, target)["kaggle_dice"] == 1.0  # empty/empty
    probs[1, 0, 0] = 0.9  # one false-positive pixel on the second empty image
    results = metrics_of(probs, target)
    assert results["kaggle_dice"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert results["dice"] == 0.0 and results["iou"] == 0.0
    assert np.isnan(results["ap"])  # no positive pixel: AP undefined


def test_partial_overlap_hand_computed():
    target = np.zeros((2, 10, 10), np.int64)
    probs = np.zeros((2, 10, 10), np.float32)
    target[0, 0:4, 0:5] = 1  # 20 pixels
    probs[0, 2:6, 0:5] = 0.8  # 20 pixels, 10 overlap
    target[1, 0, 0:6] = 1  # 6 pixels, prediction empty
    results = metrics_of(probs, target)
    tp, fp, fn = 10, 10, 10 + 6
    assert results["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert results["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert results["kaggle_dice"] == pytest.approx((2 * 10 / 40 + 0.0) / 2)


def test_threshold_boundary_is_inclusive():
    """A probability exactly equal to the threshold is foreground (``>=``)."""
    target = np.array([[[1, 0]]], np.int64)
    for threshold in (0.5, 0.3, 0.7):
        probs = np.array([[[threshold, np.nextafter(np.float32(threshold), np.float32(0))]]], np.float32)
        results = metrics_of(probs, target, threshold=threshold)
        assert results["dice"] == 1.0, threshold
    probs = np.array([[[np.nextafter(np.float32(0.5), np.float32(0)), 0.0]]], np.float32)
    assert metrics_of(probs, target)["dice"] == 0.0


# ---------------------------------------------------------------- against sklearn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs, target = random_batch(rng, shape=(6, 64, 64), prevalence=[0.05, 0.2, 0.5][seed])
    results = metrics_of(probs, target, threshold=0.55)
    y, s = target.ravel(), probs.ravel()
    assert results["ap"] == pytest.approx(average_precision_score(y, s), abs=2e-3)
    assert results["iou"] == pytest.approx(jaccard_score(y, s >= np.float32(0.55)), abs=1e-12)
    assert results["dice"] == pytest.approx(f1_score(y, s >= np.float32(0.55)), abs=1e-12)
    # best_f1 is exactly sklearn's F1 at best_threshold, and no other bin edge beats it.
    assert results["best_f1"] == pytest.approx(f1_score(y, s >= results["best_threshold"]), abs=1e-12)
    for edge in np.linspace(0, 1, 41, dtype=np.float32):
        assert f1_score(y, s >= edge) <= results["best_f1"] + 1e-12
    kaggle = np.mean([dice_score(p >= np.float32(0.55), t) for p, t in zip(probs, target)])
    assert results["kaggle_dice"] == pytest.approx(kaggle, abs=1e-12)


def test_quantised_scores_match_sklearn_exactly():
    """With scores already on the bin edges the histogram loses nothing: AP and the PR curve equal sklearn's."""
    rng = np.random.default_rng(3)
    num_bins = 50
    metrics = SegmentationMetrics(num_bins=num_bins)
    edges = metrics.bin_edges
    target = (rng.random((3, 16, 16)) < 0.3).astype(np.int64)
    bins = np.clip(rng.integers(0, 30, target.shape) + 20 * target, 0, num_bins - 1)
    probs = edges[bins]
    metrics.update(probs, target)
    y, s = target.ravel(), probs.ravel()
    assert metrics.compute()["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    precision, recall, thresholds = metrics.pr_curve()
    sk_precision, sk_recall, sk_thresholds = precision_recall_curve(y, s)
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    np.testing.assert_allclose(precision, sk_precision, atol=1e-12)
    np.testing.assert_allclose(recall, sk_recall, atol=1e-12)


def test_probability_one_and_zero_are_binned():
    target = np.array([[[1, 0, 1, 0]]], np.int64)
    probs = np.array([[[1.0, 0.0, 1.0, 0.0]]], np.float32)
    results = metrics_of(probs, target, num_bins=10)
    assert results["ap"] == 1.0 and results["best_f1"] == 1.0
    assert 0.0 < results["best_threshold"] <= 1.0


# ---------------------------------------------------------------- streaming, ignore, inputs


def test_streaming_equals_single_update():
    rng = np.random.default_rng(4)
    probs, target = random_batch(rng, shape=(9, 32, 32))
    target[2, :5] = IGNORE_INDEX
    whole = metrics_of(probs, target)
    streamed = SegmentationMetrics()
    for chunk in (slice(0, 2), slice(2, 3), slice(3, 9)):
        streamed.update(torch.from_numpy(probs[chunk]), torch.from_numpy(target[chunk]))
    assert streamed.compute() == whole
    streamed.reset()
    streamed.update(probs[:1], target[:1])
    assert streamed.compute()["num_images"] == 1


def test_ignore_index_equals_manual_masking():
    rng = np.random.default_rng(5)
    probs, target = random_batch(rng, shape=(4, 32, 32))
    ignored = rng.random(target.shape) < 0.3
    ignored[3] = False
    target_ignored = np.where(ignored, IGNORE_INDEX, target)
    results = metrics_of(probs, target_ignored, threshold=0.6)
    keep = ~ignored
    y, s = target[keep], probs[keep]
    assert results["dice"] == pytest.approx(f1_score(y, s >= np.float32(0.6)), abs=1e-12)
    assert results["iou"] == pytest.approx(jaccard_score(y, s >= np.float32(0.6)), abs=1e-12)
    assert results["ap"] == pytest.approx(average_precision_score(y, s), abs=2e-3)
    kaggle = np.mean(
        [
            dice_from_counts(
                ((p >= np.float32(0.6)) & (t == 1) & k).sum(), ((p >= np.float32(0.6)) & k).sum(), ((t == 1) & k).sum()
            )
            for p, t, k in zip(probs, target, keep)
        ]
    )
    assert results["kaggle_dice"] == pytest.approx(kaggle, abs=1e-12)
    # Ignored pixels' probabilities have no influence at all.
    scrambled = np.where(ignored, rng.random(probs.shape).astype(np.float32), probs)
    assert metrics_of(scrambled, target_ignored, threshold=0.6) == results


def test_bad_inputs_raise():
    metrics = SegmentationMetrics()
    probs = np.full((1, 4, 4), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.update(probs * 3, np.zeros((1, 4, 4), np.int64))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        metrics.update(probs, np.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(probs[0], np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="target shape"):
        metrics.update(probs, np.zeros((1, 4, 5), np.int64))
    with pytest.raises(RuntimeError, match="before any update"):
        metrics.compute()
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMetrics(num_classes=3, class_names=["a"])


def test_half_precision_probs():
    rng = np.random.default_rng(6)
    probs, target = random_batch(rng)
    half = torch.from_numpy(probs).to(torch.bfloat16)
    assert metrics_of(half, torch.from_numpy(target)) == metrics_of(half.float().numpy(), target)


# ---------------------------------------------------------------- multi-label


def test_multilabel_equals_binary_per_class():
    rng = np.random.default_rng(7)
    names = ["Effusion", "Nodule", "Mass"]
    probs, target = random_batch(rng, shape=(5, 3, 24, 24))
    target = target.astype(np.float32)
    target[:, 2] = 0  # "Mass": no positive pixel anywhere
    target[1, 0, :4] = IGNORE_INDEX
    multi = SegmentationMetrics(num_classes=3, class_names=names, threshold=0.4)
    multi.update(torch.from_numpy(probs[:2]), torch.from_numpy(target[:2]))
    multi.update(probs[2:], target[2:])
    results = multi.compute()
    per_class = [metrics_of(probs[:, c], target[:, c].astype(np.int64), threshold=0.4) for c in range(3)]
    for name, binary in zip(names, per_class):
        for key in ("dice", "iou", "ap", "kaggle_dice"):
            np.testing.assert_allclose(results[f"{key}/{name}"], binary[key], rtol=1e-12)  # NaN == NaN here
        assert results[f"num_positive_images/{name}"] == binary["num_positive_images"]
    for key in ("dice", "iou", "kaggle_dice"):
        assert results[key] == pytest.approx(np.mean([b[key] for b in per_class]))
    assert np.isnan(results["ap/Mass"])
    assert results["ap"] == pytest.approx(np.mean([per_class[0]["ap"], per_class[1]["ap"]]))  # Mass excluded
    assert results["num_images"] == 5
    precision, recall, thresholds = multi.pr_curve(1)
    single = SegmentationMetrics()
    single.update(probs[:, 1], target[:, 1].astype(np.int64))
    for a, b in zip((precision, recall, thresholds), single.pr_curve()):
        np.testing.assert_array_equal(a, b)


def test_multilabel_default_names_and_shape_check():
    metrics = SegmentationMetrics(num_classes=2)
    metrics.update(np.ones((1, 2, 4, 4), np.float32), np.ones((1, 2, 4, 4), np.float32))
    assert {"dice/class_0", "dice/class_1", "ap/class_1"} <= set(metrics.compute())
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        metrics.update(np.ones((1, 3, 4, 4), np.float32), np.ones((1, 3, 4, 4), np.float32))


def test_result_keys_and_their_order():
    """The layout metrics.json and the Trainer's logs carry: binary keys unsuffixed, with best F1; multi-label keys
    per class, then the means over classes."""
    rng = np.random.default_rng(10)
    probs, target = random_batch(rng, shape=(2, 2, 8, 8))
    assert list(metrics_of(probs[:, 0], target[:, 0])) == [
        "dice",
        "iou",
        "kaggle_dice",
        "ap",
        "best_f1",
        "best_threshold",
        "num_images",
        "num_positive_images",
    ]
    per_class = ("dice", "iou", "ap", "kaggle_dice", "num_positive_images")
    assert list(metrics_of(probs, target, num_classes=2, class_names=["a", "b"])) == [
        *(f"{key}/{name}" for name in ("a", "b") for key in per_class),
        "dice",
        "iou",
        "kaggle_dice",
        "ap",
        "num_images",
    ]


def test_chunked_update_equals_whole():
    """update() walks the (image, class) planes in chunks; chunk borders must not change any count."""
    rng = np.random.default_rng(8)
    probs, target = random_batch(rng, shape=(3, 5, 16, 16))
    target[0, 1, :3] = IGNORE_INDEX
    whole = SegmentationMetrics(num_classes=5)
    whole.update(probs, target)
    chunked = SegmentationMetrics(num_classes=5, chunk_pixels=2 * 16 * 16)  # 2 planes per chunk, across class borders
    chunked.update(probs, target)
    assert chunked.compute() == whole.compute()


def test_failed_update_changes_nothing():
    rng = np.random.default_rng(9)
    probs, target = random_batch(rng, shape=(3, 16, 16))
    metrics = SegmentationMetrics(chunk_pixels=16 * 16)  # one plane per chunk
    metrics.update(probs, target)
    before = metrics.compute()
    bad = target.copy()
    bad[2, 0, 0] = 7  # only the last chunk is bad
    with pytest.raises(ValueError, match="found"):
        metrics.update(probs, bad)
    assert metrics.compute() == before
