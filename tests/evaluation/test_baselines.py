"""Baselines beside every metric: the empty mask and the training set's mean mask at 0.5 (the prior mask), scored
like the model, in training's evaluation and in `cxrseg evaluate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrseg.data.prior import compute_prior_mask, load_prior_mask, save_prior_mask
from cxrseg.evaluation.baselines import BaselineScores
from cxrseg.evaluation.metrics import dice_score
from cxrseg.labels import IGNORE_INDEX, PNEUMOTHORAX, LabelSet
from cxrseg.training.trainer import streaming_metrics

ANATOMY = LabelSet("anatomy", ("background", "lung", "heart"), multilabel=False)


def test_the_empty_mask_scores_the_share_of_empty_images_and_the_prior_its_overlap():
    truth = np.zeros((3, 2, 4, 4), np.uint8)  # 3 images, 2 classes
    truth[0, 0, :2] = 1  # image 0: class 0 in the top half
    truth[1, 0, :, :2] = 1  # image 1: class 0 in the left half; class 1 nowhere
    truth[2, 1, 3, 3] = 1  # image 2: class 1 one pixel
    truth[2, 0, 0, 0] = IGNORE_INDEX
    prior = np.zeros((2, 4, 4), bool)
    prior[0, :2, :2] = True
    scores = BaselineScores(("a", "b"), prior)
    scores.update(torch.from_numpy(truth[:2]))
    scores.update(torch.from_numpy(truth[2:]))  # batches add up
    result = scores.compute()
    assert result["empty_mask_kaggle_dice/a"] == pytest.approx(1 / 3)  # image 2 has no class a
    assert result["empty_mask_kaggle_dice/b"] == pytest.approx(2 / 3)
    assert result["empty_mask_dice/a"] == 0.0
    expected = [dice_score(prior[0], truth[i, 0]) for i in range(3)]
    assert result["prior_mask_kaggle_dice/a"] == pytest.approx(np.mean(expected))
    intersection, predicted, positive = 4 + 4 + 0, 4 + 4 + 3, 8 + 8  # image 2 ignores one prior pixel
    assert result["prior_mask_dice/a"] == pytest.approx(2 * intersection / (predicted + positive))
    assert result["prior_mask_dice"] == pytest.approx((result["prior_mask_dice/a"] + result["prior_mask_dice/b"]) / 2)
    without = BaselineScores(("a", "b"))  # no prior: only the empty mask
    without.update(torch.from_numpy(truth))
    assert "prior_mask_dice" not in without.compute() and without.compute()["empty_mask_dice/a"] == 0.0


def test_the_prior_mask_is_the_mean_mask_at_one_half_and_round_trips(tmp_path):
    masks = [np.zeros((8, 8), np.uint8) for _ in range(4)]
    for i, mask in enumerate(masks):
        mask[:4, :] = 1  # lung in the top half of every image
        mask[6:, :] = 2 if i < 3 else 0  # heart at the bottom of 3 of 4
        mask[4, :] = 2 if i < 1 else 1  # a row that is heart in 1 of 4, lung in 3 of 4
    prior = compute_prior_mask(masks, ANATOMY, 4)  # at 4 x 4: nearest neighbour takes rows 0, 2, 4, 6
    assert prior.shape == (2, 4, 4)
    assert prior[0].tolist() == [[True] * 4, [True] * 4, [True] * 4, [False] * 4]
    assert prior[1].tolist() == [[False] * 4, [False] * 4, [False] * 4, [True] * 4]
    save_prior_mask(tmp_path, prior)
    np.testing.assert_array_equal(load_prior_mask(tmp_path, 2, 4), prior)
    assert load_prior_mask(tmp_path, 2, 8).shape == (2, 8, 8)  # another working size: nearest neighbour
    assert load_prior_mask(tmp_path, 1, 4) is None  # saved for 2 classes: not this model's
    assert load_prior_mask(tmp_path / "nowhere", 2, 4) is None
    binary = compute_prior_mask([np.full((4, 4), 255, np.uint8)] * 2, PNEUMOTHORAX, 4)
    save_prior_mask(tmp_path / "binary", binary)
    np.testing.assert_array_equal(load_prior_mask(tmp_path / "binary", 1, 4), binary)


def test_training_evaluation_scores_each_class_of_a_softmax_model_with_its_baselines():
    """A 3-class single-label model: per class metrics (not only the first class), and the baselines beside them."""
    labels = torch.zeros(2, 4, 4, dtype=torch.int64)
    labels[:, :2] = 1  # lung on top
    labels[:, 3] = 2  # heart at the bottom
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[:, 0] = 5.0  # background everywhere...
    logits[:, 1, :2], logits[:, 0, :2] = 5.0, -5.0  # ...but a perfect lung
    prior = np.zeros((2, 4, 4), bool)
    prior[0, :1] = True  # half the lung
    prior[1, 3] = True  # the whole heart
    compute, preprocess = streaming_metrics(ANATOMY, prior=prior)
    probs = preprocess(logits, labels)
    assert probs.shape == (2, 2, 4, 4)

    class Prediction:
        predictions, label_ids = probs, labels

    result = compute(Prediction(), compute_result=True)
    assert result["dice/lung"] == 1.0 and result["dice/heart"] == 0.0 and result["dice"] == 0.5
    assert result["prior_mask_dice/lung"] == pytest.approx(2 * 4 / (4 + 8))
    assert result["prior_mask_dice/heart"] == 1.0 and result["empty_mask_dice"] == 0.0
