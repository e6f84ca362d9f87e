import itertools
import json

import numpy as np
import pytest
import torch

from cxrseg.constants import POSTPROCESS_FILENAME
from cxrseg.evaluation.metrics import CHUNK_PIXELS, SegmentationMetrics, dice_score
from cxrseg.evaluation.rule_search import TripletSearch
from cxrseg.labels import IGNORE_INDEX
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess, load_postprocess

# ---------------------------------------------------------------- apply


def test_apply_gate_and_binarisation():
    probs = np.zeros((2, 6, 6), np.float32)
    probs[:, 0, :3] = 0.75  # 3 pixels exactly at top_threshold (inclusive)
    probs[:, 1, :] = 0.3  # 6 pixels exactly at bottom_threshold
    probs[:, 2, :] = 0.29
    expected = (probs >= np.float32(0.3)).astype(np.uint8)
    kept = PostProcess(top_threshold=0.75, min_area=3, bottom_threshold=0.3).apply(probs)
    assert kept.dtype == np.uint8 and kept.shape == (2, 6, 6)
    np.testing.assert_array_equal(kept, expected)
    dropped = PostProcess(top_threshold=0.75, min_area=4, bottom_threshold=0.3).apply(probs)
    assert not dropped.any()
    single = PostProcess(top_threshold=0.75, min_area=3, bottom_threshold=0.3).apply(torch.from_numpy(probs[0]))
    assert single.shape == (6, 6)
    np.testing.assert_array_equal(single, expected[0])


def test_apply_gate_is_per_image():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0] = 0.9  # 16 confident pixels
    probs[1, 0, 0] = 0.9  # 1 confident pixel
    masks = PostProcess(top_threshold=0.8, min_area=2, bottom_threshold=0.5).apply(probs)
    assert masks[0].all() and not masks[1].any()


def test_defaults_are_plain_binarisation():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(PostProcess().apply(probs), (probs >= np.float32(0.5)).astype(np.uint8))


def test_apply_checks_image_size_and_values():
    post = PostProcess(0.75, 2000, 0.3, image_size=16)
    with pytest.raises(ValueError, match=r"scaled\(8\)"):
        post.apply(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        post.apply(np.full((16, 16), 2.0, np.float32))
    with pytest.raises(ValueError, match="min_area"):
        PostProcess(min_area=-1)
    with pytest.raises(ValueError, match="top_threshold"):
        PostProcess(top_threshold=1.5)


def test_scaled():
    post = PostProcess(0.75, 2000, 0.3, image_size=1024)
    half = post.scaled(512)
    assert half == PostProcess(0.75, 500, 0.3, image_size=512)
    assert half.scaled(1024) == post
    with pytest.raises(ValueError, match="image_size"):
        PostProcess(0.75, 2000, 0.3).scaled(512)


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    post = PostProcess(0.75, 2000, 0.3, image_size=1024)
    written = post.save(tmp_path)
    assert written == tmp_path / POSTPROCESS_FILENAME
    assert PostProcess.load(tmp_path) == post
    assert PostProcess.load(written) == post
    other = tmp_path / "other.json"
    PostProcess().save(other)
    assert PostProcess.load(other) == PostProcess()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", POSTPROCESS_FILENAME]  # no temp files left


def test_load_rejects_unknown_key_and_bad_values(tmp_path):
    path = tmp_path / POSTPROCESS_FILENAME
    path.write_text(json.dumps({"top_threshold": 0.7, "min_pixels": 10}))
    with pytest.raises(ValueError, match="min_pixels") as info:
        PostProcess.load(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps({"min_area": "2000"}))
    with pytest.raises(ValueError, match="min_area") as info:
        PostProcess.load(path)
    assert str(path) in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PostProcess.load(path)


# ---------------------------------------------------------------- search


def lesion_dataset(rng: np.random.Generator, size: int = 48):
    """Images where the right triplet is known: (top 0.85, min_area 50, bottom 0.3) scores a perfect 1.0.

    Lesion images: truth is a 20x20 square whose 10x10 core has prob 0.9 and whose rim has 0.4 (only a bottom
    threshold of 0.3 recovers the full extent). Empty images: a 60-pixel false-positive blob at 0.8 (passes a top
    threshold of 0.5 or 0.7 with min_area 50, but no pixel reaches 0.85) or nothing. Background below 0.2.
    """
    probs = (0.2 * rng.random((6, size, size))).astype(np.float32)
    target = np.zeros((6, size, size), np.int64)
    for i in (0, 1, 2):
        y, x = rng.integers(0, size - 20, 2)
        target[i, y : y + 20, x : x + 20] = 1
        probs[i, y : y + 20, x : x + 20] = 0.4
        probs[i, y + 5 : y + 15, x + 5 : x + 15] = 0.9
    for i in (3, 4):
        y, x = rng.integers(0, size - 10, 2)
        probs[i, y : y + 6, x : x + 10] = 0.8
    return probs, target


def search_rule(batches, top_thresholds, min_areas, bottom_thresholds, chunk_pixels=CHUNK_PIXELS):
    """(winning rule, table) of the one-class :class:`TripletSearch` over ``batches`` of (probs, target)."""
    search = TripletSearch(top_thresholds, min_areas, bottom_thresholds, chunk_pixels=chunk_pixels)
    for probs, target in batches:
        search.update(probs, target)
    return search.compute(), search.table()


GRID = {"top_thresholds": [0.5, 0.7, 0.85], "min_areas": [0, 50, 200], "bottom_thresholds": [0.3, 0.5, 0.7]}


def test_search_finds_known_triplet():
    probs, target = lesion_dataset(np.random.default_rng(1))
    batches = [(probs[:4], target[:4]), (torch.from_numpy(probs[4:]), torch.from_numpy(target[4:]))]
    best, table = search_rule(batches, **GRID)
    assert best == PostProcess(0.85, 50, 0.3, image_size=48)
    assert table[0]["kaggle_dice"] == pytest.approx(1.0)
    assert len(table) == 27 and all(row["kaggle_dice"] < 1.0 for row in table[1:])
    assert [row["kaggle_dice"] for row in table] == sorted((row["kaggle_dice"] for row in table), reverse=True)
    # Plain binarisation at 0.5 keeps only the lesion cores and the false positives.
    plain = next(r for r in table if (r["top_threshold"], r["min_area"], r["bottom_threshold"]) == (0.5, 0, 0.5))
    assert plain["kaggle_dice"] == pytest.approx((3 * 2 * 100 / (100 + 400) + 0 + 0 + 1) / 6)


def brute_force(probs, target, top, area, bottom) -> float:
    masks = PostProcess(top, area, bottom).apply(probs)
    return float(np.mean([dice_score(m, t) for m, t in zip(masks, target)]))


@pytest.mark.parametrize("chunk_images", [None, 2])
def test_streaming_search_equals_brute_force(chunk_images):
    rng = np.random.default_rng(2)
    num_images, size = 10, 24
    # with chunk_images, images are counted a few at a time inside a batch; chunk borders must not matter
    chunk_pixels = chunk_images * size * size if chunk_images else CHUNK_PIXELS
    target = np.zeros((num_images, size, size), np.int64)
    probs = (0.5 * rng.random((num_images, size, size))).astype(np.float32)
    for i in range(0, num_images, 2):  # half the images have a lesion of random size and confidence
        h, w = rng.integers(2, 12, 2)
        target[i, :h, :w] = 1
        probs[i, :h, :w] += rng.uniform(0.1, 0.5)
    target[1, -3:] = IGNORE_INDEX
    probs[1, -3:] = 0.9  # confident padding: the gate counts it (apply cannot see the target), the Dice does not
    target[2, :1] = IGNORE_INDEX
    grid = {"top_thresholds": [0.4, 0.6, 0.8], "min_areas": [0, 5, 20, 60], "bottom_thresholds": [0.2, 0.45, 0.7]}
    batches = [(probs[i : i + 3], target[i : i + 3]) for i in range(0, num_images, 3)] + [(probs[:0], target[:0])]
    best, table = search_rule(iter(batches), **grid, chunk_pixels=chunk_pixels)
    assert best.image_size == size
    scores = {(r["top_threshold"], r["min_area"], r["bottom_threshold"]): r["kaggle_dice"] for r in table}
    for triplet in itertools.product(*grid.values()):
        assert scores[triplet] == pytest.approx(brute_force(probs, target, *triplet), abs=1e-12), triplet
    assert (best.top_threshold, best.min_area, best.bottom_threshold) == max(scores, key=scores.get)
    # min_area 0 never gates: that is what SegmentationMetrics reports at threshold = bottom_threshold.
    metrics = SegmentationMetrics(threshold=0.45)
    metrics.update(probs, target)
    for top in grid["top_thresholds"]:
        assert scores[(top, 0, 0.45)] == pytest.approx(metrics.compute()["kaggle_dice"], abs=1e-12)


def test_search_bad_input():
    probs = np.zeros((1, 8, 8), np.float32)
    target = np.zeros((1, 8, 8), np.int64)
    with pytest.raises(ValueError, match="no images"):
        search_rule([], [0.5], [0], [0.5])
    with pytest.raises(ValueError, match="at least one value"):
        search_rule([(probs, target)], [], [0], [0.5])
    with pytest.raises(ValueError, match="image size"):
        search_rule([(probs, target), (np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4)))], [0.5], [0], [0.5])
    with pytest.raises(ValueError, match="must both be"):
        search_rule([(probs, target[0])], [0.5], [0], [0.5])


# ---------------------------------------------------------------- per class (multi-output models)


def test_class_postprocess_applies_each_rule_to_its_plane_and_round_trips(tmp_path):
    rules = ClassPostProcess(("Effusion", "Nodule"), (PostProcess(0.5, 0, 0.5, 8), PostProcess(0.3, 2, 0.2, 8)))
    probs = np.zeros((3, 2, 8, 8), np.float32)
    probs[:, :, 2:4, 2:4] = 0.35  # 4 pixels: under 0.5 for Effusion, kept (>= 2 at 0.3) and >= 0.2 for Nodule
    probs[1, 1, 2:4, 2:4] = 0.25  # image 1: Nodule's core below its top threshold: dropped
    masks = rules.apply(probs)
    assert masks.shape == (3, 2, 8, 8) and not masks[:, 0].any()
    assert masks[0, 1].sum() == masks[2, 1].sum() == 4 and not masks[1, 1].any()
    np.testing.assert_array_equal(rules.apply(probs[0]), masks[0])  # [K, H, W] too
    assert load_postprocess(rules.save(tmp_path)) == rules
    saved = json.loads((tmp_path / POSTPROCESS_FILENAME).read_text())
    assert saved == {
        "image_size": 8,
        "classes": {
            "Effusion": {"top_threshold": 0.5, "min_area": 0, "bottom_threshold": 0.5},
            "Nodule": {"top_threshold": 0.3, "min_area": 2, "bottom_threshold": 0.2},
        },
    }
    assert rules.scaled(16).rules[1] == PostProcess(0.3, 8, 0.2, 16)
    # today's single-triplet files load as they did
    (tmp_path / "single.json").write_text('{"top_threshold": 0.75, "min_area": 2000, "bottom_threshold": 0.3}')
    assert load_postprocess(tmp_path / "single.json") == PostProcess(0.75, 2000, 0.3)


def test_class_postprocess_errors_name_the_file_and_class(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"image_size": 8, "classes": {"Nodule": {"top_threshold": 2}}}))
    with pytest.raises(ValueError, match=r"p\.json: class 'Nodule': top_threshold must be a number in \[0, 1\]"):
        load_postprocess(path)
    path.write_text(json.dumps({"classes": {"Nodule": {"threshold": 0.3}}}))
    with pytest.raises(ValueError, match="class 'Nodule' must map to top_threshold, min_area and bottom_threshold"):
        load_postprocess(path)
    with pytest.raises(ValueError, match="K = 2 classes"):
        ClassPostProcess(("a", "b"), (PostProcess(), PostProcess())).apply(np.zeros((3, 4, 4), np.float32))


def test_searches_over_parts_merge_into_the_search_over_all():
    rng = np.random.default_rng(1)
    probs = rng.random((9, 2, 12, 12)).astype(np.float32)
    target = (rng.random((9, 2, 12, 12)) < 0.3).astype(np.uint8)
    grid = ((0.5, 0.7), (0, 20), (0.3, 0.5))
    whole = TripletSearch(*grid, num_classes=2, class_names=["a", "b"])
    whole.update(probs, target)
    parts = [TripletSearch(*grid, num_classes=2, class_names=["a", "b"]) for _ in range(3)]
    for part, chunk in zip(parts, range(0, 9, 3)):
        part.update(probs[chunk : chunk + 3], target[chunk : chunk + 3])
    merged = parts[0].merged(parts[1:])
    np.testing.assert_allclose(merged.kaggle_dice(), whole.kaggle_dice(), atol=1e-12)
    np.testing.assert_array_equal(merged.dataset_dice(), whole.dataset_dice())
    for k in range(2):  # each class is the one-class search of its plane
        best, table = search_rule([(probs[:, k], target[:, k])], *grid)
        assert whole.table(k)[0]["kaggle_dice"] == pytest.approx(table[0]["kaggle_dice"], abs=1e-12)
        assert whole.compute().rules[k] == best
