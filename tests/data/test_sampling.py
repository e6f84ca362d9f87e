from collections import Counter

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from torch.utils.data import BatchSampler

from cxrseg.config import DataArguments, SamplingArguments, parse_recipe, save_recipe
from cxrseg.data.dataset import TrainingData, build_sampler, load_training_data
from cxrseg.data.sampling import BalancedSampler, ClassBalancedSampler, SampleKey, ShuffledSampler
from cxrseg.labels import CHESTXDET, PNEUMOTHORAX, LabelSet
from cxrseg.model import IMAGENET_MEAN, IMAGENET_STD
from cxrseg.synthetic import make_multilabel_demo_data

FLAGS = [True] * 20 + [False] * 80


def test_every_positive_is_in_the_pool_and_negatives_are_undersampled():
    sampler = BalancedSampler(FLAGS, negative_keep_ratio=0.25, positive_weight=1.0, seed=3)
    assert len(sampler) == 20 + 20
    for epoch in range(5):
        drawn = sampler.indices(epoch)
        assert len(drawn) == 40
        assert len({i for i in drawn if not FLAGS[i]}) <= 20  # at most the kept negatives


def test_deterministic_per_seed_and_epoch_and_fresh_each_epoch():
    a = BalancedSampler(FLAGS, 0.25, 1.5, seed=3)
    b = BalancedSampler(FLAGS, 0.25, 1.5, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert a.indices(0) != a.indices(1)
    assert BalancedSampler(FLAGS, 0.25, 1.5, seed=4).indices(0) != a.indices(0)


def test_positive_weight_oversamples_positives():
    sampler = BalancedSampler(FLAGS, negative_keep_ratio=0.25, positive_weight=3.0, seed=0)
    counts = Counter(FLAGS[i] for epoch in range(200) for i in sampler.indices(epoch))
    # pool: 20 positives of weight 3 and 20 negatives of weight 1 → 75% positives expected
    assert counts[True] / (counts[True] + counts[False]) == pytest.approx(0.75, abs=0.02)


def test_bad_arguments():
    with pytest.raises(ValueError, match="negative_keep_ratio"):
        BalancedSampler(FLAGS, negative_keep_ratio=1.5)
    with pytest.raises(ValueError, match="nothing to draw"):
        BalancedSampler([False] * 3, negative_keep_ratio=0.0)


# Class-balanced (multi-label): 80 images of a common class A, 20 of a rare class B, 100 without findings.
PRESENCE = [(True, False)] * 80 + [(False, True)] * 20 + [(False, False)] * 100


def draw_fractions(sampler, epochs=100):
    """Fraction of draws that are A images, B images and empty images over ``epochs`` epochs."""
    drawn = Counter(PRESENCE[i] for epoch in range(epochs) for i in sampler.indices(epoch))
    total = sum(drawn.values())
    return drawn[(True, False)] / total, drawn[(False, True)] / total, drawn[(False, False)] / total


def test_class_balanced_weights_follow_the_rarest_class():
    presence = [(True, False, False), (True, True, False), (False, True, False), (False, False, False)] + [
        (True, False, False)
    ] * 6
    sampler = ClassBalancedSampler(presence, class_balance_power=1.0, empty_image_weight=0.5)
    # images holding each class: A 8, B 2, C 0 → class weights (8/8)^1 = 1, (8/2)^1 = 4, and 0 for the absent class
    assert sampler.image_counts.tolist() == [8, 2, 0]
    assert sampler.class_weights.tolist() == [1.0, 4.0, 0.0]
    # an image holding A and B weighs as its rarest class, B; the empty image weighs empty_image_weight
    assert sampler.weights.tolist() == [1.0, 4.0, 4.0, 0.5] + [1.0] * 6
    half = ClassBalancedSampler(presence, class_balance_power=0.5)
    assert half.class_weights.tolist() == pytest.approx([1.0, 2.0, 0.0])


def test_rare_class_is_drawn_more_often_than_uniform_by_the_expected_factor():
    uniform = ClassBalancedSampler(PRESENCE, class_balance_power=0.0, empty_image_weight=1.0, seed=1)
    balanced = ClassBalancedSampler(PRESENCE, class_balance_power=1.0, empty_image_weight=1.0, seed=1)
    # power 0: every image weighs 1 → B is drawn as often as it occurs, 20 / 200
    assert draw_fractions(uniform)[1] == pytest.approx(0.1, abs=0.01)
    # power 1: B images weigh 80/20 = 4 → 20·4 / (80·1 + 20·4 + 100·1) = 80 / 260, i.e. 3.08x uniform
    a, b, empty = draw_fractions(balanced)
    assert b == pytest.approx(80 / 260, abs=0.01)
    assert a == pytest.approx(80 / 260, abs=0.01) and empty == pytest.approx(100 / 260, abs=0.01)
    # power 0.5: B images weigh 2 → 40 / 220
    assert draw_fractions(ClassBalancedSampler(PRESENCE, 0.5, seed=1))[1] == pytest.approx(40 / 220, abs=0.01)


def test_empty_image_weight_scales_images_without_findings():
    a, b, empty = draw_fractions(ClassBalancedSampler(PRESENCE, 1.0, empty_image_weight=0.0, seed=2))
    assert empty == 0.0
    assert b == pytest.approx(0.5, abs=0.015)  # power 1 with one class per image: the classes come up equally often


def test_class_balanced_epoch_length_and_determinism():
    a = ClassBalancedSampler(PRESENCE, 0.5, seed=3)
    b = ClassBalancedSampler(PRESENCE, 0.5, seed=3)
    assert len(a) == len(PRESENCE)
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert len(list(a)) == len(PRESENCE)
    assert a.indices(0) != a.indices(1)
    assert ClassBalancedSampler(PRESENCE, 0.5, seed=4).indices(0) != a.indices(0)
    torch.manual_seed(123)  # global RNG state must not matter
    first = a.indices(5)
    torch.manual_seed(456)
    assert a.indices(5) == first


def test_class_balanced_shards_partition_the_epoch_across_processes():
    """Accelerate gives each process a slice of the same sequence: together they draw exactly one epoch, each key
    naming its place in it; resuming after k batches (Accelerate's SkipBatchSampler) yields the same remaining keys."""
    shards = []
    for rank in range(2):
        sampler = ClassBalancedSampler(PRESENCE, 0.5, seed=7)  # one instance per process
        sampler.set_epoch(2)
        shards.append(list(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), 2, rank)))
    epoch = ClassBalancedSampler(PRESENCE, 0.5, seed=7).indices(2)
    interleaved = [key for pair in zip(*shards) for batch in pair for key in batch]
    assert interleaved == [SampleKey(row, 7, 2, position) for position, row in enumerate(epoch)]
    resumed = SkipBatchSampler(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), 2, 1), skip_batches=3)
    assert list(resumed) == shards[1][3:]


def test_shuffled_sampler_draws_every_row_once_in_a_fresh_order_each_epoch():
    sampler = ShuffledSampler(50, seed=3)
    assert len(sampler) == 50
    orders = [sampler.indices(epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert orders[0] != orders[1] != orders[2]
    torch.manual_seed(123)  # global RNG state must not matter
    sampler.set_epoch(1)
    assert [key.row for key in sampler] == ShuffledSampler(50, seed=3).indices(1) == orders[1]


def test_augmentation_seeds_differ_by_epoch_and_position_only():
    key = SampleKey(row=4, seed=0, epoch=1, position=7)
    assert key.augmentation_seed() == key._replace(row=9).augmentation_seed()  # a function of the draw, not the row
    others = [key._replace(position=8), key._replace(epoch=2), key._replace(seed=1), key._replace(epoch=7, position=1)]
    assert len({key.augmentation_seed(), *(other.augmentation_seed() for other in others)}) == 5


def test_class_balanced_bad_arguments():
    with pytest.raises(ValueError, match="class_balance_power"):
        ClassBalancedSampler(PRESENCE, class_balance_power=-1)
    with pytest.raises(ValueError, match="empty_image_weight"):
        ClassBalancedSampler(PRESENCE, empty_image_weight=-0.5)
    with pytest.raises(ValueError, match="nothing to draw"):
        ClassBalancedSampler([(False, False)] * 3, empty_image_weight=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        ClassBalancedSampler([])


def load_train_rows(root, labels, split_path):
    data_args = DataArguments(data_dir=str(root), image_size=32, augmentation="none", val_fraction=0.25)
    return load_training_data(data_args, labels, split_path, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_build_sampler_single_label_follows_the_recipe(demo_root, tmp_path):
    data = load_train_rows(demo_root, PNEUMOTHORAX, tmp_path / "splits.json")
    shuffled, fallback = build_sampler(SamplingArguments(), PNEUMOTHORAX, data, seed=0)
    assert isinstance(shuffled, ShuffledSampler) and len(shuffled) == len(data.train) and fallback is None
    positives_only = SamplingArguments(balanced_sampling=True, negative_keep_ratio=0.0, positive_weight=2.0)
    sampler, _ = build_sampler(positives_only, PNEUMOTHORAX, data, seed=5)
    assert isinstance(sampler, BalancedSampler) and len(sampler) == sum(data.train_is_positive) > 0
    assert all(data.train_is_positive[i] for i in sampler.indices(0))
    assert build_sampler(positives_only, PNEUMOTHORAX, data, seed=6)[0].indices(0) != sampler.indices(0)


def test_build_sampler_multilabel_follows_the_recipe(tmp_path):
    root = make_multilabel_demo_data(tmp_path / "data", num_images=16, size=32, seed=0)
    data = load_train_rows(root, CHESTXDET, tmp_path / "splits.json")
    assert not all(map(any, data.train_class_presence)), "the demo data needs images without findings"
    findings_only = SamplingArguments(balanced_sampling=True, empty_image_weight=0.0)
    sampler, _ = build_sampler(findings_only, CHESTXDET, data, seed=1)
    assert isinstance(sampler, ClassBalancedSampler) and len(sampler) == len(data.train)
    assert all(any(data.train_class_presence[i]) for i in sampler.indices(0))


def presence_data(presence: list[tuple[bool, ...]]) -> TrainingData:
    """A TrainingData stand-in holding only what build_sampler reads: rows and their class presence."""
    return TrainingData(list(range(len(presence))), None, [any(p) for p in presence], [], 0, {}, presence)


LUNGS_AND_NODULES = LabelSet("lungs", ("background", "lung", "nodule"), multilabel=False)


@pytest.mark.parametrize("multilabel", [False, True], ids=["single-label", "multi-label"])
def test_nothing_to_balance_falls_back_to_shuffling_and_says_why(multilabel):
    labels = LabelSet("anatomy", ("lung", "heart") if multilabel else ("background", "lung", "heart"), multilabel)
    balanced = SamplingArguments(balanced_sampling=True)
    every = presence_data([(True, True)] * 10)
    sampler, why = build_sampler(balanced, labels, every, seed=0)
    assert isinstance(sampler, ShuffledSampler) and len(sampler) == 10
    assert sorted(sampler.indices(0)) == list(range(10))  # every image once, not 63% of them drawn with replacement
    quantifier = "all of" if multilabel else "one of"
    assert why == f"every training image holds {quantifier} lung, heart (10 images)"
    none = presence_data([(False, False)] * 4)
    sampler, why = build_sampler(balanced, labels, none, seed=0)
    assert isinstance(sampler, ShuffledSampler) and why == "no training image holds any of lung, heart (4 images)"
    mixed = presence_data([(True, True)] * 5 + [(False, False)] * 5)  # half the images hold nothing: balance them
    sampler, why = build_sampler(balanced, labels, mixed, seed=0)
    assert why is None and isinstance(sampler, ClassBalancedSampler if multilabel else BalancedSampler)
    if multilabel:  # a class missing from some images is something to balance for one sigmoid per class
        partial = presence_data([(True, True)] * 5 + [(True, False)] * 5)
        assert isinstance(build_sampler(balanced, labels, partial, seed=0)[0], ClassBalancedSampler)


def test_balance_classes_balances_by_the_named_class():
    """Lungs in every image, nodules in a few: balancing every class would see only positives; by nodule it
    undersamples the images without one."""
    presence = [(True, True)] * 4 + [(True, False)] * 16
    data = presence_data(presence)
    by_any = SamplingArguments(balanced_sampling=True, negative_keep_ratio=0.25)
    sampler, why = build_sampler(by_any, LUNGS_AND_NODULES, data, seed=0)
    assert isinstance(sampler, ShuffledSampler) and why == "every training image holds one of lung, nodule (20 images)"
    by_nodule = SamplingArguments(balanced_sampling=True, negative_keep_ratio=0.25, balance_classes=["nodule"])
    sampler, why = build_sampler(by_nodule, LUNGS_AND_NODULES, data, seed=0)
    assert why is None and isinstance(sampler, BalancedSampler) and len(sampler) == 4 + 4
    assert {i for i in sampler.indices(0) if i < 4} and len({i for i in sampler.indices(0) if i >= 4}) <= 4
    lung_only = SamplingArguments(balanced_sampling=True, balance_classes=["lung"])
    assert build_sampler(lung_only, LUNGS_AND_NODULES, data, seed=0)[1].startswith("every training image holds lung")


def test_the_saved_recipe_records_the_fallback(tmp_path):
    recipe = parse_recipe(["--balanced_sampling", "true"])
    recipe.override("balanced_sampling", False, "every training image holds lung (10 images): nothing to balance")
    assert recipe.sampling.balanced_sampling is False and recipe.resolved["balanced_sampling"] is False
    save_recipe(recipe, tmp_path / "recipe.yaml")
    text = (tmp_path / "recipe.yaml").read_text()
    assert "# Set by the run: balanced_sampling: false (every training image holds lung (10 images)" in text
    assert parse_recipe(["--config", str(tmp_path / "recipe.yaml")]).sampling.balanced_sampling is False
