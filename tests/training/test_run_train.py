"""End to end: the real entry points (``run_train.py``, and ``cxrseg train`` under ``accelerate launch -m``) on a
small synthetic dataset, and the output folder a Hub repo needs; ``cxrseg train`` parses and fails as
``run_train.py`` does."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import UperNetForSemanticSegmentation

import cxrseg.training.train
from cxrseg.cli import main as cli_main
from tests.conftest import TINY_MODEL_CONFIG

RUN_TRAIN = [sys.executable, "run_train.py"]
CXRSEG_TRAIN = [sys.executable, "-m", "cxrseg", "train"]
# `accelerate launch -m cxrseg train`, as `accelerate launch run_train.py` (one process; the flags only silence its
# notes about defaults)
ACCELERATE_CXRSEG_TRAIN = [str(Path(sys.executable).parent / "accelerate"), "launch", "--cpu", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cxrseg",
                           "train"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("entry", [RUN_TRAIN, ACCELERATE_CXRSEG_TRAIN], ids=["run_train.py", "accelerate-cxrseg-train"])
def test_run_train_writes_a_complete_output_folder(tmp_path, entry):
    out = tmp_path / "out"
    cmd = [
        *entry,
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


@pytest.mark.parametrize("entry", [RUN_TRAIN, CXRSEG_TRAIN], ids=["run_train.py", "cxrseg-train"])
def test_unknown_key_fails_before_training_in_one_line(entry):
    result = subprocess.run(
        [*entry, "--config", "recipe/demo.yaml", "--learning_rat", "1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: Unknown key 'learning_rat' on the command line. Known keys are the fields of ModelArguments, "
        "DataArguments, LossArguments, SamplingArguments, PrecisionArguments, TrainingArguments."
    ]


@pytest.mark.parametrize("num_folds", [None, "2"])
def test_run_train_and_cxrseg_train_run_the_same_recipe(tmp_path, monkeypatch, num_folds):
    """The same command line through ``python run_train.py`` and ``cxrseg train``: the same recipe reaches
    :func:`~cxrseg.training.train.train` (or ``train_folds`` for a cross-validation), both ways of writing a value
    included."""
    runs = []
    monkeypatch.setattr(cxrseg.training.train, "train", lambda recipe: runs.append(("train", recipe)))
    monkeypatch.setattr(cxrseg.training.train, "train_folds", lambda recipe: runs.append(("train_folds", recipe)))
    argv = ["--config", "recipe/demo.yaml", "--num_train_epochs", "1", "--learning_rate=5.0e-5"]
    argv += ["--output_dir", str(tmp_path / "out"), *(["--num_folds", num_folds] if num_folds else [])]
    monkeypatch.setattr(sys, "argv", ["run_train.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("run_train.py", run_name="__main__")
    assert exit_info.value.code == 0
    assert cli_main(["train", *argv]) == 0
    (called, by_script), (called_by_cli, by_cli) = runs
    assert called == called_by_cli == ("train_folds" if num_folds else "train")
    assert by_script == by_cli
    assert by_script.resolved == by_cli.resolved
    assert by_cli.resolved["num_train_epochs"] == 1 and by_cli.resolved["learning_rate"] == 5.0e-5
    assert by_cli.source == "recipe/demo.yaml"


def test_cxrseg_train_help_lists_the_recipe_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--learning_rate" in out and "--negative_keep_ratio" in out


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
