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

# Under pytest-xdist (make test, make test-fast) the workers share the cores: one torch thread per worker, and per
# process it starts, so their thread pools do not oversubscribe the machine.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

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


# ---------------------------------------------------------------------------------------------- a local Hub
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The replaced ``HfApi`` (:class:`tests.hub_server.FakeHub`): pushes become git commits in tmp_path/mirrors."""
    from huggingface_hub import constants

    import cxrseg.hub.access
    from tests.hub_server import FakeHub

    fake = FakeHub(tmp_path / "mirrors")
    monkeypatch.setattr(cxrseg.hub.access, "HfApi", fake)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # set to 1 above for every other test
    return fake


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """(endpoint, mirrors): the olah server of tests/hub_server.py, serving the git repos under mirrors."""
    from tests.hub_server import serve

    mirrors = tmp_path_factory.mktemp("hub") / "mirrors"
    with serve(mirrors, tmp_path_factory.mktemp("hub_server")) as endpoint:
        yield endpoint, mirrors


@pytest.fixture
def served_hub(hub, hub_server, tmp_path, monkeypatch):
    """:func:`hub`, committing where the server serves; this process and its subprocesses download from it (into an
    empty cache). Repos outlive the test: each test pushes to its own repo ids."""
    from tests.hub_server import use_endpoint

    hub.endpoint, hub.mirrors = hub_server
    use_endpoint(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    return hub
