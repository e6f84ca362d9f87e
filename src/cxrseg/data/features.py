"""The ``datasets`` schema of a PNG-layout split, shared by the training loader and ``prepare --save-dataset``."""

from __future__ import annotations

import datasets

LAYOUT_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "image_id": datasets.Value("string"),
        "is_positive": datasets.Value("bool"),
    }
)
"""``image``: the 8-bit gray PNG. ``mask``: its mask PNG (0/1 or 0/255 8-bit, or the 16-bit multi-label bit field;
None where a split has no masks, e.g. SIIM test). ``image_id``: the file name without ``.png``. ``is_positive``:
any non-zero mask pixel (None without a mask)."""
