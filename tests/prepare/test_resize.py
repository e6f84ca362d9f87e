"""The resizing rules every prepare source uses."""

from __future__ import annotations

import cv2
import numpy as np

from cxrseg.prepare.resize import resize_class_indices, resize_mask


def test_resize_mask_rule():
    # Same size: exact. Large region: the 0.5 area threshold. Small region: kept as the pixels it touches.
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 1
    mask[50, 50] = 1
    np.testing.assert_array_equal(resize_mask(mask, 64), mask)
    out = resize_mask(mask, 16)
    coverage = cv2.resize(mask.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[:11, :11], (coverage[:11, :11] >= 0.5).astype(np.uint8))
    assert out[12, 12] == 1 and out[12:, 12:].sum() == 1
    # No random non-empty mask ever becomes empty.
    rng = np.random.default_rng(0)
    for _ in range(200):
        sparse = (rng.random((96, 96)) < rng.uniform(0.0001, 0.01)).astype(np.uint8)
        if sparse.any():
            assert resize_mask(sparse, int(rng.integers(4, 40))).any()


def test_resize_class_indices_never_blends_classes():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 2
    mask[10:12, 10:12] = 1
    np.testing.assert_array_equal(resize_class_indices(mask, None), mask)
    small = resize_class_indices(mask, 10)
    assert small.shape == (10, 10) and set(np.unique(small)) <= {0, 1, 2}
    assert (small[:, 5:] == 2).all() and (small[:, :5] != 2).all()
