"""End to end: the real entry point on a small synthetic dataset, and the output folder a Hub repo needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from transformers import UperNetForSemanticSegmentation

from tests.conftest import TINY_MODEL_CONFIG


@pytest.mark.slow
def test_run_train_writes_a_complete_output_folder(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "run_train.py",
        "--config",
        "recipe/demo.yaml",
        "--data_dir",
        str(tmp_path / "demo"),
        "--demo_num_images",
        "16",
        "--val_fraction",
        "0.5",  # 16 demo images hold 2 positives: one lands in validation, so AP is defined
        "--image_size",
        "64",
        "--model_config",
        json.dumps(TINY_MODEL_CONFIG),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "3",
        "--output_dir",
        str(out),
        "--logging_steps",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "recipe.yaml",
        "splits.json",
        "all_results.json",
        "trainer_state.json",
        "training_curves.png",
        "README.md",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "pneumothorax"}
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_dice", "eval_kaggle_dice", "eval_ap", "train_loss"} <= results.keys()
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["image_size"] == 64 and recipe["num_train_epochs"] == 1
    model = UperNetForSemanticSegmentation.from_pretrained(out)
    assert model.config.num_labels == 2


def test_unknown_key_fails_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "run_train.py", "--config", "recipe/demo.yaml", "--learning_rat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "'learning_rat'" in result.stderr and "command line" in result.stderr


def test_make_demo_data_cli(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrseg",
            "make-demo-data",
            "--out",
            str(tmp_path / "d"),
            "--num-images",
            "5",
            "--size",
            "48",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d/images/train").glob("*.png"))) == 5
    assert len(list((tmp_path / "d/masks/train").glob("*.png"))) == 5
