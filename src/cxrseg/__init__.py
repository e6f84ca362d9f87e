"""cxrseg: chest X-ray segmentation with UperNet-Swin, the Hugging Face Trainer and Accelerate.

What a user calls from Python::

    import cxrseg

    metrics = cxrseg.train(cxrseg.parse_recipe(["--config", "recipe/demo.yaml", "--num_train_epochs", "1"]))
    segmenter = cxrseg.load_segmenter("outputs/demo")  # or cxrseg.load_ensemble([...]) for CV folds / several models
    cxrseg.evaluate(segmenter, "data/demo", split="val")
    cxrseg.predict(segmenter, "my_images/", "predictions/")
    gray = cxrseg.read_image("image.dcm")  # uint8 [H, W], any supported format
    cxrseg.push_folder("outputs/demo", "me/my-model")

Each name is imported from its home module on first use (:pep:`562`), so ``import cxrseg`` (and with it the
``cxrseg`` command's start-up) does not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name → the module it lives in
_EXPORTS = {
    "train": "cxrseg.training.train",
    "parse_recipe": "cxrseg.config",
    "evaluate": "cxrseg.evaluation.evaluate",
    "predict": "cxrseg.inference.predict",
    "load_segmenter": "cxrseg.inference.segmenter",
    "load_ensemble": "cxrseg.inference.ensemble",
    "read_image": "cxrseg.imageio",
    "LabelSet": "cxrseg.labels",
    "push_folder": "cxrseg.hub",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name on first access (start-up time: most of them import torch)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxrseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
