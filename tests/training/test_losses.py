import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from cxrseg.config import LossArguments
from cxrseg.errors import DataError, RecipeError
from cxrseg.labels import IGNORE_INDEX, PNEUMOTHORAX, LabelSet
from cxrseg.training.losses import (
    DiceBCELoss,
    DiceCELoss,
    build_loss,
    class_weights_from_counts,
    positive_weights_from_counts,
)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_dice_ce_equals_monai_plus_weighted_ce(batch_dice, num_classes):
    torch.manual_seed(0)
    logits = torch.randn(3, num_classes, 16, 16)
    labels = torch.randint(0, num_classes, (3, 16, 16))
    labels[1] = 0  # an image without foreground
    weights = torch.rand(num_classes) + 0.5
    ours = DiceCELoss(weights, lambda_ce=0.7, lambda_dice=1.3, smooth=1e-5, batch_dice=batch_dice)(logits, labels)
    monai = DiceLoss(
        include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch_dice
    )(logits, labels[:, None])
    reference = 0.7 * F.cross_entropy(logits, labels, weight=weights) + 1.3 * monai
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)


def test_ignore_index_is_excluded_from_both_terms():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    labels = torch.randint(0, 2, (2, 8, 8))
    padded_logits = torch.cat([logits, torch.randn(2, 2, 8, 4) * 5], dim=3)
    padded_labels = torch.cat([labels, torch.full((2, 8, 4), IGNORE_INDEX)], dim=2)
    loss = DiceCELoss(batch_dice=True)
    assert loss(padded_logits, padded_labels).item() == pytest.approx(loss(logits, labels).item(), abs=1e-6)


def test_dice_bce_equals_monai_sigmoid_plus_bce():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 12, 12)
    target = (torch.rand(2, 3, 12, 12) > 0.7).float()
    pos_weight = torch.tensor([1.0, 3.0, 10.0])
    ours = DiceBCELoss(pos_weight)(logits, target)
    reference = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight[:, None, None]) + DiceLoss(
        sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5
    )(logits, target)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)


def test_class_weights_inverse_frequency():
    # The reference repo's estimate: 0.9907 background, 0.0093 pneumothorax → about 0.5047 and 54.2.
    weights = class_weights_from_counts([990_780, 9_220])
    assert weights == pytest.approx([1_000_000 / (2 * 990_780), 1_000_000 / (2 * 9_220)])
    assert weights[0] == pytest.approx(0.5047, abs=1e-4)
    with pytest.raises(DataError, match=r"\[1\]"):
        class_weights_from_counts([10, 0])


def test_build_loss_auto_weights_are_used():
    loss_args = LossArguments(class_weights="auto", lambda_ce=0.6, lambda_dice=1.7, dice_smooth=0.5, batch_dice=True)
    loss = build_loss(loss_args, PNEUMOTHORAX, [900, 100], 1000)
    assert isinstance(loss, DiceCELoss)
    assert loss.class_weights.tolist() == pytest.approx([1000 / 1800, 1000 / 200])
    assert (loss.lambda_ce, loss.lambda_dice, loss.smooth, loss.batch_dice) == (0.6, 1.7, 0.5, True)
    with pytest.raises(RecipeError, match="3 values"):
        build_loss(LossArguments(class_weights="1,2,3"), PNEUMOTHORAX, [900, 100], 1000)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_bce_equals_monai_with_weights_lambdas_and_empty_planes(batch_dice):
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 10, 10) * 3
    target = (torch.rand(3, 4, 10, 10) > 0.8).float()
    target[0, 1] = 0  # a class absent from one image
    target[:, 3] = 0  # a class absent from the whole batch
    target[2, :2, 3:6, 3:6] = 1  # two classes on the same pixels
    pos_weight = torch.tensor([2.0, 5.0, 1.0, 10.0])
    ours = DiceBCELoss(pos_weight, lambda_ce=0.6, lambda_dice=1.7, batch_dice=batch_dice)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight[:, None, None])
    dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch_dice)(logits, target)
    assert ours.item() == pytest.approx((0.6 * bce + 1.7 * dice).item(), abs=1e-5)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_bce_ignore_index_is_excluded_from_both_terms(batch_dice):
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 8, 8)
    target = (torch.rand(2, 3, 8, 8) > 0.7).float()
    padded_logits = torch.cat([logits, torch.randn(2, 3, 8, 4) * 5], dim=3)
    padded_target = torch.cat([target, torch.full((2, 3, 8, 4), float(IGNORE_INDEX))], dim=3)
    loss = DiceBCELoss(torch.tensor([1.0, 3.0, 7.0]), batch_dice=batch_dice)
    assert loss(padded_logits, padded_target).item() == pytest.approx(loss(logits, target).item(), abs=1e-6)


def test_dice_bce_ignores_one_class_without_touching_the_others():
    """A pixel ignored in one class's plane only still counts for the other classes (masks are per class)."""
    torch.manual_seed(5)
    logits = torch.randn(1, 2, 6, 6)
    target = (torch.rand(1, 2, 6, 6) > 0.6).float()
    ignored = target.clone()
    ignored[0, 0, :, :3] = IGNORE_INDEX
    loss = DiceBCELoss(lambda_dice=0.0)
    # BCE is a mean over valid (pixel, class) pairs: 18 of class 0 plus 36 of class 1
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = (terms[0, 0, :, 3:].sum() + terms[0, 1].sum()) / 54
    assert loss(logits, ignored).item() == pytest.approx(expected.item(), abs=1e-6)
    dice_only = DiceBCELoss(lambda_ce=0.0)
    reference = (
        DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits[:, :1, :, 3:], target[:, :1, :, 3:])
        + DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits[:, 1:], target[:, 1:])
    ) / 2
    assert dice_only(logits, ignored).item() == pytest.approx(reference.item(), abs=1e-6)


def test_build_loss_auto_multilabel_uses_capped_positive_weights():
    counts, num_pixels = [500, 10, 0], 1000
    assert positive_weights_from_counts(counts, num_pixels, cap=20.0) == [1.0, 20.0, 20.0]
    assert positive_weights_from_counts(counts, num_pixels, cap=200.0) == [1.0, 99.0, 200.0]
    labels = LabelSet("three", ("a", "b", "c"), multilabel=True)
    loss = build_loss(LossArguments(class_weights="auto", max_pos_weight=20.0), labels, counts, num_pixels)
    assert isinstance(loss, DiceBCELoss)
    assert loss.class_weights.tolist() == [1.0, 20.0, 20.0]  # the BCE's positive weights
    explicit = build_loss(LossArguments(class_weights="1,2,3"), labels, counts, num_pixels)
    assert explicit.class_weights.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(RecipeError, match="2 values"):
        build_loss(LossArguments(class_weights="1,2"), labels, counts, num_pixels)
