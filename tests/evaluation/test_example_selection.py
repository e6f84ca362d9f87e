"""Choosing the images of `cxrseg visualize predictions`: categories taken in turn, and each example shows the image,
truth, probabilities and masks of the image it was chosen for, under the mask rule in effect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrseg.evaluation.examples import prediction_examples, select_examples
from cxrseg.evaluation.metrics import dice_score
from cxrseg.evaluation.stream import ImageResult
from cxrseg.postprocessing.rules import PostProcess
from tests.evaluation.test_evaluate import intensity_segmenter, triplet_dataset


def test_select_examples_takes_each_category_in_turn():
    def result(image_id, truth, pred):
        return ImageResult(image_id, np.array([truth]), np.array([pred]), np.array([0.0]))

    results = [
        result("tp_small", 5, 3),
        result("tp_big", 50, 40),
        result("miss", 9, 0),
        result("fp", 0, 7),
        result("tn_b", 0, 0),
        result("tn_a", 0, 0),
    ]
    chosen = select_examples(results, 5)
    assert [(r.image_id, c) for r, c in chosen] == [
        ("tp_big", "true positive"),
        ("miss", "miss"),
        ("fp", "false positive"),
        ("tn_a", "true negative"),
        ("tp_small", "true positive"),
    ]
    assert len(select_examples(results, 100)) == 6


def test_examples_show_the_images_they_were_chosen_for(tmp_path):
    root = triplet_dataset(tmp_path / "data")
    segmenter = intensity_segmenter(tmp_path / "model")  # probability = gray level / 255
    examples = prediction_examples(segmenter, root, "test", 5, batch_size=2)
    assert [(e.image_id, e.category) for e in examples] == [
        ("positive_0", "true positive"),  # the larger lesion first
        ("negative_a", "false positive"),  # 30 px at 0.65 before 4 px at 0.96
        ("empty", "true negative"),
        ("positive_1", "true positive"),
        ("negative_b", "false positive"),
    ]
    for example in examples:
        image = cv2.imread(str(root / "images" / "test" / f"{example.image_id}.png"), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(root / "masks" / "test" / f"{example.image_id}.png"), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(example.image, image)
        np.testing.assert_array_equal(example.truth, truth[None])
        np.testing.assert_allclose(example.probs, image[None] / 255, atol=1e-5)
        np.testing.assert_array_equal(example.pred, example.probs >= 0.5)
        assert example.dice == pytest.approx(dice_score(example.pred[0], truth))

    # Under the triplet the data was built for, the negatives are empty and the lesions whole.
    segmenter.postprocess = PostProcess(0.7, 6, 0.3, image_size=64)
    examples = prediction_examples(segmenter, root, "test", 5)
    assert [(e.image_id, e.category) for e in examples] == [
        ("positive_0", "true positive"),
        ("empty", "true negative"),
        ("positive_1", "true positive"),
        ("negative_a", "true negative"),
        ("negative_b", "true negative"),
    ]
    for example in examples:
        truth = cv2.imread(str(root / "masks" / "test" / f"{example.image_id}.png"), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(example.pred, truth[None])
        assert example.dice == 1.0
