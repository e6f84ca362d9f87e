from collections import Counter

import pytest

from cxrseg.sampling import BalancedSampler

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
