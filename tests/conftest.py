"""Shared fixtures and helpers: the one tiny model config (bench/ uses it too), tiny saved models, and small
datasets written to tmp_path. No network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cxrseg.labels import PNEUMOTHORAX, LabelSet
from cxrseg.model import build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_MODEL_CONFIG = {
    "backbone_config": {
        "model_type": "swin",
        "image_size": 64,
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 4,
        "drop_path_rate": 0.0,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "hidden_size": 16,
    "auxiliary_channels": 8,
    "auxiliary_in_channels": 64,
}


def save_tiny_model(
    path: Path, labels: LabelSet = PNEUMOTHORAX, image_size: int = 64, seed: int = 0, splits: dict | None = None
) -> Path:
    """A randomly initialised tiny UperNet-Swin saved as a training run saves it (weights, config, processor)."""
    torch.manual_seed(seed)
    model, processor = build_model(None, TINY_MODEL_CONFIG, labels, image_size)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if splits is not None:
        (path / "splits.json").write_text(json.dumps(splits))
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A 24-image synthetic dataset (64 px) in the PNG layout, shared read-only by the session's tests."""
    from cxrseg.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", num_images=24, size=64, seed=1)
