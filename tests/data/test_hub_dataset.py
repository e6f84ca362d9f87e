"""Training data from a Hub dataset: the layout pushed as ``cxrseg prepare --push-to-hub`` pushes it, then read back
over HTTP from the local Hub server (tests/hub_server.py) by ``data_dir: hf://datasets/ID[@REVISION]``, validated and
indexed like the local layout; a run trains from it and its card names the dataset."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from cxrseg.cli import main as cli_main
from cxrseg.config import DataArguments
from cxrseg.data.dataset import index_training_source
from cxrseg.data.png_layout import DataError, index_layout
from cxrseg.labels import PNEUMOTHORAX, TASKS
from cxrseg.prepare.export import push_dataset
from cxrseg.synthetic import make_demo_data
from cxrseg.training.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG


def test_a_pushed_layout_is_read_back_by_its_hub_id_at_a_revision(served_hub, demo_root, tmp_path):
    push_dataset(demo_root, "me/demo-png")
    assert served_hub.calls[:2] == [
        ("create_repo", "me/demo-png", True, "dataset"),
        ("create_commit", "me/demo-png", ["README.md", "data/train-00000-of-00001.parquet", "labels.json"]),
    ]
    repo = served_hub.repo("me/demo-png", "dataset")
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    push_dataset(make_demo_data(tmp_path / "small", num_images=5, size=32, seed=3), "me/demo-png")  # a new commit

    local = {row.image_id: row for row in index_layout(demo_root, "train", PNEUMOTHORAX)}
    source, index = index_training_source(DataArguments(data_dir=f"hf://datasets/me/demo-png@{first}"), PNEUMOTHORAX)
    assert [row.image_id for row in index] == sorted(local) == source["image_id"]
    for row in index:  # validated and counted from the downloaded masks: the local layout's counts
        assert (row.pixel_counts, row.width, row.height) == (
            local[row.image_id].pixel_counts,
            local[row.image_id].width,
            local[row.image_id].height,
        )
    first_row = source[0]
    png = np.asarray(Image.open(demo_root / "images" / "train" / f"{first_row['image_id']}.png"))
    np.testing.assert_array_equal(np.asarray(first_row["image"]), png)  # the embedded bytes
    _, latest = index_training_source(DataArguments(data_dir="hf://datasets/me/demo-png"), PNEUMOTHORAX)
    assert len(latest) == 5  # main: the second push

    with pytest.raises(DataError, match=r"data_dir hf://datasets/me/missing: cannot load the Hub dataset me/missing"):
        index_training_source(DataArguments(data_dir="hf://datasets/me/missing"), PNEUMOTHORAX)
    with pytest.raises(DataError, match=r"declares pneumothorax .* but the run expects chestxdet"):
        index_training_source(DataArguments(data_dir="hf://datasets/me/demo-png"), TASKS["chestxdet"])


@pytest.mark.slow
def test_prepare_push_to_hub_then_train_from_the_id(served_hub, demo_root, tmp_path):
    # Machine 1: prepare a folder of images and masks and push it (access checked first, with the token's whoami).
    argv = ["prepare", "folder", "--images", str(demo_root / "images/train"), "--masks", str(demo_root / "masks/train")]
    assert cli_main([*argv, "--out", str(tmp_path / "prepared"), "--push-to-hub", "lab/demo-train"]) == 0
    assert served_hub.calls[0] == ("whoami",)
    # Machine 2: train from the id alone (everything comes over HTTP into an empty cache).
    out = tmp_path / "out"
    argv = [
        "--config", "recipe/demo.yaml", "--data_dir", "hf://datasets/lab/demo-train", "--image_size", "64",
        "--augmentation", "none", "--model_config", json.dumps(TINY_MODEL_CONFIG), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--output_dir", str(out), "--generate_demo_data", "true",
    ]  # fmt: skip
    assert train_main(argv) == 0
    assert not (tmp_path / "hf:").exists()  # generate_demo_data writes no folder named after the id
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"]) == sorted(p.stem for p in (demo_root / "images/train").iterdir())
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["lab/demo-train"]
    assert {r.dataset_type for r in card.data.eval_results} == {"lab/demo-train"}
