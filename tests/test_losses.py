import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from cxrseg.labels import IGNORE_INDEX
from cxrseg.losses import DiceBCELoss, DiceCELoss, build_loss, class_weights_from_counts


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
    with pytest.raises(ValueError, match=r"\[1\]"):
        class_weights_from_counts([10, 0])


def test_build_loss_auto_weights_are_used():
    loss = build_loss(False, "auto", [900, 100], 1000)
    assert loss.class_weights.tolist() == pytest.approx([1000 / 1800, 1000 / 200])
    with pytest.raises(ValueError, match="3 values"):
        build_loss(False, [1.0, 2.0, 3.0], [900, 100], 1000)
