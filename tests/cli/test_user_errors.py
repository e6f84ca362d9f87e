"""Every user error, through the real entry points (``cxrseg.training.train.main`` as run_train.py calls it,
``cxrseg.cli.main`` (``cxrseg train`` included) and, for a few, a subprocess): exit status 2, one line ``error: ...``
naming the file, key or option, no traceback and no usage text, and every file in the workspace byte-identical
afterwards (inputs, a finished training run, a user's own folder and files)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import huggingface_hub
import numpy as np
import pytest
import torch
import yaml

from cxrseg.cli import main as cli_main
from cxrseg.data.png_layout import index_layout
from cxrseg.files import TRAINING_RUN, mark_output
from cxrseg.labels import PNEUMOTHORAX, TASKS
from cxrseg.training.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG, save_tiny_model


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub here, and no waiting for it: offline mode, as HF_HUB_OFFLINE=1 gives when set before the import."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, demo_root) -> Path:
    """A workspace holding what a user has: data (indexed once, so its mask cache exists), broken copies of it, the
    raw folders of a prepare, a trained model, a finished training run, a recipe, and folders and files of their own."""
    ws = tmp_path_factory.mktemp("workspace")
    shutil.copytree(demo_root, ws / "data")
    for name in ("bad_mask", "negative"):
        shutil.copytree(demo_root, ws / name)
    first_mask = sorted((ws / "bad_mask/masks/train").iterdir())[0]
    cv2.imwrite(str(first_mask), np.full((64, 64), 7, np.uint8))
    for mask in (ws / "negative/masks/train").iterdir():
        cv2.imwrite(str(mask), np.zeros((64, 64), np.uint8))
    for name in ("data", "negative"):
        index_layout(ws / name, "train", PNEUMOTHORAX)
    for sub in ("images/train", "masks/train"):
        (ws / "empty" / sub).mkdir(parents=True)
    shutil.copytree(ws / "data/images/train", ws / "raw/images")
    shutil.copytree(ws / "data/masks/train", ws / "raw/masks")
    save_tiny_model(ws / "model")
    save_tiny_model(ws / "multilabel_model", labels=TASKS["chestxdet"])
    ids = sorted(p.stem for p in (ws / "data/images/train").iterdir())
    run = mark_output(save_tiny_model(ws / "run", splits={"train": ids[:16], "val": ids[16:]}), TRAINING_RUN)
    (run / "recipe.yaml").write_text("# Resolved recipe (from recipe.yaml + overrides)\nlearning_rate: 0.001\n")
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 0.5}]}))
    (ws / "user").mkdir()
    (ws / "user/README.md").write_text("my notes\n")
    (ws / "user.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    (ws / "user.csv").write_text("patient,age\n1,40\n")
    (ws / "bad.json").write_text("{\n")
    (ws / "labels_bad.json").write_text(json.dumps({"task": "lungs", "names": ["lung", "heart"]}))  # no background
    recipe = {
        "model_name_or_path": None,
        "model_config": TINY_MODEL_CONFIG,
        "data_dir": str(ws / "data"),
        "image_size": 64,
        "augmentation": "none",
        "val_fraction": 0.25,
        "num_train_epochs": 1,
        "use_cpu": True,
        "mixed_precision": "no",
        "report_to": "none",
    }
    (ws / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (ws / "syntax.yaml").write_text("task: [pneumothorax\n")
    (ws / "wrong_type.yaml").write_text(yaml.safe_dump({**recipe, "num_train_epochs": "three"}))
    for name, text in {
        "semicolon.csv": "ImageId;EncodedPixels\n1.2;-1\n",
        "fields.csv": "ImageId,EncodedPixels\n1.2,-1\n1.3,1 2,5\n",
        "traversal.csv": "ImageId,EncodedPixels\n../../etc/x,-1\n",
        "no_id.csv": "ImageId,EncodedPixels\n ,-1\n",
    }.items():  # malformed SIIM RLE CSVs
        (ws / name).write_text(text)
    (ws / "binary.csv").write_bytes(bytes(range(256)))
    (ws / "nan_rate.yaml").write_text(yaml.safe_dump(recipe) + "learning_rate: .nan\n")
    # checkpoints a run cannot resume from: another model's shapes; an RNG state torch's safe load refuses
    trainer_state = json.dumps({"global_step": 1, "log_history": []})
    (save_tiny_model(ws / "other_shape/checkpoint-1", labels=TASKS["chestxdet"]) / "trainer_state.json").write_text(
        trainer_state
    )
    unsafe = save_tiny_model(ws / "unsafe_rng/checkpoint-1")
    (unsafe / "trainer_state.json").write_text(trainer_state)
    torch.save({"python": None, "numpy": None, "cpu": argparse.Namespace(payload=1)}, unsafe / "rng_state.pth")
    unsafe_optimizer = save_tiny_model(ws / "unsafe_optimizer/checkpoint-1")
    (unsafe_optimizer / "trainer_state.json").write_text(trainer_state)
    torch.save({"state": {}, "param_groups": [argparse.Namespace(lr=1)]}, unsafe_optimizer / "optimizer.pt")
    return ws


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def train(ws: Path, *extra: str) -> list[str]:
    return ["--config", str(ws / "recipe.yaml"), "--output_dir", str(ws / "new_run"), *extra]


def model_config(**backbone) -> str:
    """TINY_MODEL_CONFIG as JSON with some backbone values changed (``auxiliary_in_channels`` changes the head)."""
    config = json.loads(json.dumps(TINY_MODEL_CONFIG))
    if "auxiliary_in_channels" in backbone:
        config["auxiliary_in_channels"] = backbone.pop("auxiliary_in_channels")
    config["backbone_config"].update(backbone)
    return json.dumps(config)


def cxrseg_train(ws: Path, *extra: str) -> list[str]:
    return ["train", *train(ws, *extra)]


def predict(ws: Path, *extra: str) -> list[str]:
    base = ["predict", "--model", str(ws / "model"), "--input", str(ws / "data/images/train"), "--num-workers", "0"]
    return [*base, *(extra or ("--out", str(ws / "predictions")))]


def prepare(ws: Path, *extra: str) -> list[str]:
    return ["prepare", "folder", "--images", str(ws / "raw/images"), "--masks", str(ws / "raw/masks"), *extra]


# (id, entry point, argv from the workspace, the message: a regular expression)
CASES = [
    # run_train.py: the recipe
    ("yaml-syntax", "train", lambda ws: ["--config", str(ws / "syntax.yaml")],
     r"syntax\.yaml is not valid YAML: .*line 2"),
    ("recipe-missing", "train", lambda ws: ["--config", str(ws / "nothere.yaml")], r"nothere\.yaml does not exist"),
    ("recipe-is-folder", "train", lambda ws: ["--config", str(ws / "data")], r"data is a folder"),
    ("wrong-type-yaml", "train", lambda ws: ["--config", str(ws / "wrong_type.yaml")],
     r"^num_train_epochs in .*wrong_type\.yaml: 'three' is not a valid number"),
    ("bad-channels-last", "train", lambda ws: train(ws, "--channels_last", "maybe"),
     r"--channels_last on the command line: .*expected one of yes/no"),
    ("bad-mixed-precision", "train", lambda ws: train(ws, "--mixed_precision", "fp8"),
     r"mixed_precision must be one of \('auto', 'bf16', 'fp16', 'no'\), got 'fp8'"),
    ("unknown-key-cli", "train", lambda ws: train(ws, "--learning_rat", "1"),
     r"^Unknown key 'learning_rat' on the command line"),
    ("wrong-type-cli", "train", lambda ws: train(ws, "--learning_rate", "fast"),
     r"^--learning_rate on the command line: invalid float value: 'fast'"),
    ("wrong-bool-cli", "train", lambda ws: train(ws, "--balanced_sampling", "maybe"),
     r"^--balanced_sampling on the command line: Truthy value expected"),
    ("missing-value", "train", lambda ws: train(ws, "--image_size"),
     r"^--image_size on the command line: expected one"),
    ("bad-class-weights", "train", lambda ws: train(ws, "--class_weights", "1,x"), r"^class_weights must be"),
    ("bad-model-config", "train", lambda ws: train(ws, "--model_config", "{oops"), r"^model_config is neither JSON"),
    ("unknown-model-type", "train", lambda ws: train(ws, "--model_config", '{"backbone_config": {"model_type": "x"}}'),
     r"^model_config is not a valid UperNet config"),
    ("settings-clash", "train", lambda ws: train(ws, "--eval_strategy", "no"), r"load_best_model_at_end requires"),
    ("no-eval-rows", "train", lambda ws: train(ws, "--max_eval_samples", "0"), r"^max_eval_samples must be at least 1"),
    # run_train.py: values only torch, numpy or the Trainer would check, checked before anything is written
    ("negative-learning-rate", "train", lambda ws: train(ws, "--learning_rate=-1e-4"), r"^learning_rate must be > 0"),
    ("nan-learning-rate-yaml", "train", lambda ws: ["--config", str(ws / "nan_rate.yaml"), "--output_dir",
                                                    str(ws / "new_run")], r"^learning_rate must be > 0, got nan"),
    ("zero-batch-size", "train", lambda ws: train(ws, "--per_device_train_batch_size", "0"),
     r"^per_device_train_batch_size must be at least 1"),
    ("zero-eval-batch-size", "train", lambda ws: train(ws, "--per_device_eval_batch_size", "0"),
     r"^per_device_eval_batch_size must be at least 1"),
    ("negative-seed", "train", lambda ws: train(ws, "--seed", "-1"), r"^seed must be an integer in \[0, 2\*\*32\)"),
    ("huge-seed", "train", lambda ws: train(ws, "--seed", str(2**40)), r"^seed must be an integer"),
    ("negative-split-seed", "train", lambda ws: train(ws, "--split_seed", "-5"), r"^split_seed must be"),
    ("negative-keep-ratio", "train", lambda ws: train(ws, "--negative_keep_ratio", "-0.5"),
     r"^negative_keep_ratio must be in \[0, 1\]"),
    ("zero-positive-weight", "train", lambda ws: train(ws, "--balanced_sampling", "true", "--positive_weight", "0"),
     r"^positive_weight must be > 0"),
    ("negative-weight-decay", "train", lambda ws: train(ws, "--weight_decay=-0.1"), r"^weight_decay must be >= 0"),
    ("zero-epochs", "train", lambda ws: train(ws, "--num_train_epochs", "0"), r"^num_train_epochs must be > 0"),
    ("zero-accumulation", "train", lambda ws: train(ws, "--gradient_accumulation_steps", "0"),
     r"^gradient_accumulation_steps must be at least 1"),
    ("no-loss-term", "train", lambda ws: train(ws, "--lambda_ce", "0", "--lambda_dice", "0"),
     r"^lambda_ce and lambda_dice are both 0"),
    ("negative-class-weight", "train", lambda ws: train(ws, "--class_weights", "1,-2"),
     r"^class_weights must be finite numbers >= 0"),
    ("zero-image-size", "train", lambda ws: train(ws, "--image_size", "0"), r"^image_size must be at least 1"),
    # run_train.py: model_config built and run (a dry forward pass) before anything is written
    ("heads-do-not-divide", "train", lambda ws: train(ws, "--model_config", model_config(num_heads=[3, 3, 3, 3])),
     r"^The model from model_config cannot run on 64x64 images .*num_heads must divide"),
    ("model-config-wrong-type", "train", lambda ws: train(ws, "--model_config", model_config(embed_dim="16")),
     r"^model_config is not a valid UperNet config: .*embed_dim"),
    ("model-config-zero-window", "train", lambda ws: train(ws, "--model_config", model_config(window_size=0)),
     r"^The model from model_config cannot run"),
    ("model-config-channels", "train", lambda ws: train(ws, "--model_config", model_config(auxiliary_in_channels=7)),
     r"^The model from model_config cannot run .*channels"),
    ("model-config-no-backbone", "train", lambda ws: train(ws, "--model_config", '{"backbone_config": 3}'),
     r"^model_config needs a 'backbone_config' mapping"),
    ("cv-heads-do-not-divide", "train",
     lambda ws: train(ws, "--num_folds", "2", "--model_config", model_config(num_heads=[3, 3, 3, 3])),
     r"^The model from model_config cannot run"),
    # run_train.py: a checkpoint the Trainer could not resume from
    ("resume-other-shape", "train",
     lambda ws: train(ws, "--resume_from_checkpoint", str(ws / "other_shape/checkpoint-1")),
     r"model\.safetensors does not fit this model: .* has shape"),
    ("resume-unsafe-rng", "train",
     lambda ws: train(ws, "--resume_from_checkpoint", str(ws / "unsafe_rng/checkpoint-1")),
     r"rng_state\.pth cannot be loaded safely .*never loads a checkpoint file unsafely"),
    ("resume-unsafe-optimizer", "train",
     lambda ws: train(ws, "--resume_from_checkpoint", str(ws / "unsafe_optimizer/checkpoint-1")),
     r"optimizer\.pt cannot be loaded safely \(it holds objects that are not plain data\).* another checkpoint\.$"),
    # a finished run, then a rerun that only torch or the Trainer would have stopped: the run stays byte-identical
    ("rerun-negative-learning-rate", "train", lambda ws: train(ws, "--output_dir", str(ws / "run"), "--learning_rate",
                                                               "-1"), r"^learning_rate must be > 0"),
    ("rerun-heads-do-not-divide", "train",
     lambda ws: train(ws, "--output_dir", str(ws / "run"), "--model_config", model_config(num_heads=[3, 3, 3, 3])),
     r"cannot run on 64x64 images"),
    ("rerun-resume-other-shape", "train",
     lambda ws: train(ws, "--output_dir", str(ws / "run"), "--resume_from_checkpoint",
                      str(ws / "other_shape/checkpoint-1")), r"does not fit this model"),
    # run_train.py: data, split, loss, model
    ("bad-mask", "train", lambda ws: train(ws, "--data_dir", str(ws / "bad_mask")),
     r"demo_00000\.png has values \[7\]"),
    ("empty-folder", "train", lambda ws: train(ws, "--data_dir", str(ws / "empty")), r"holds no PNG images"),
    ("no-data", "train", lambda ws: train(ws, "--data_dir", str(ws / "nothere")), r"nothere does not exist"),
    ("no-validation-image", "train", lambda ws: train(ws, "--val_fraction", "0.01"),
     r"val_fraction=0.01 of 24 images cannot make a training and a validation split"),
    ("no-training-image", "train", lambda ws: train(ws, "--val_fraction", "0.99"), r"val_fraction=0.99 of 24 images"),
    ("auto-weights-without-positives", "train",
     lambda ws: train(ws, "--data_dir", str(ws / "negative"), "--class_weights", "auto"), r"no pixels"),
    ("offline-model-id", "train", lambda ws: train(ws, "--model_name_or_path", "nobody/no-such-model"),
     r"^model_name_or_path 'nobody/no-such-model' cannot be loaded"),
    ("missing-resume-path", "train", lambda ws: train(ws, "--resume_from_checkpoint", str(ws / "nothere")),
     r"^Checkpoint .*nothere does not exist"),
    # run_train.py: the label set is the data's; a recipe's task and balance_classes must fit it
    ("task-disagrees-with-data", "train", lambda ws: train(ws, "--task", "chestxdet"),
     r"^The recipe's task is 'chestxdet' but .*data declares pneumothorax \(background, pneumothorax; softmax\)"),
    ("balance-unknown-class", "train", lambda ws: train(ws, "--balanced_sampling", "true", "--balance_classes",
                                                        "nodule"), r"^balance_classes names \['nodule'\]"),
    ("demo-data-of-no-demo-task", "train",
     lambda ws: train(ws, "--task", "lungs", "--generate_demo_data", "true", "--data_dir", str(ws / "nothere")),
     r"^generate_demo_data draws pneumothorax, chestxdet, anatomy demo data; task 'lungs' has none"),
    # run_train.py: cross-validation
    ("fold-out-of-range", "train", lambda ws: train(ws, "--num_folds", "3", "--fold", "3"),
     r"^fold must be 'all' or an index 0\.\.2"),
    ("cv-with-push", "train", lambda ws: train(ws, "--num_folds", "2", "--push_to_hub", "true"),
     r"^push_to_hub with num_folds"),
    # run_train.py: the output folder
    ("output-is-a-file", "train", lambda ws: train(ws, "--output_dir", str(ws / "user.csv")), r"user\.csv is a file"),
    ("output-is-the-data", "train", lambda ws: train(ws, "--output_dir", str(ws / "data")), r"is also an input"),
    ("output-is-the-model", "train",
     lambda ws: train(ws, "--model_name_or_path", str(ws / "run"), "--output_dir", str(ws / "run")),
     r"is also an input"),
    ("output-is-a-users-folder", "train", lambda ws: train(ws, "--output_dir", str(ws / "user")),
     r"cxrseg did not write"),
    # a finished run, then a rerun into it that fails on its data: the run stays as it was (recipe.yaml included)
    ("rerun-fails-on-data", "train", lambda ws: train(ws, "--output_dir", str(ws / "run"), "--data_dir",
                                                      str(ws / "bad_mask")), r"has values \[7\]"),
    ("rerun-fails-on-weights", "train",
     lambda ws: train(ws, "--output_dir", str(ws / "run"), "--data_dir", str(ws / "negative"), "--class_weights",
                      "auto"), r"no pixels"),
    # cxrseg train: run_train.py's parser and checks (a few of the cases above)
    ("cxrseg-train-yaml-syntax", "cli", lambda ws: ["train", "--config", str(ws / "syntax.yaml")],
     r"syntax\.yaml is not valid YAML: .*line 2"),
    ("cxrseg-train-unknown-key", "cli", lambda ws: cxrseg_train(ws, "--learning_rat", "1"),
     r"^Unknown key 'learning_rat' on the command line"),
    ("cxrseg-train-wrong-type-cli", "cli", lambda ws: cxrseg_train(ws, "--learning_rate=fast"),
     r"^--learning_rate on the command line: invalid float value: 'fast'"),
    ("cxrseg-train-bad-mask", "cli", lambda ws: cxrseg_train(ws, "--data_dir", str(ws / "bad_mask")),
     r"demo_00000\.png has values \[7\]"),
    ("cxrseg-train-zero-batch-size", "cli", lambda ws: cxrseg_train(ws, "--per_device_train_batch_size=0"),
     r"^per_device_train_batch_size must be at least 1"),
    ("cxrseg-train-heads-do-not-divide", "cli",
     lambda ws: cxrseg_train(ws, "--model_config", model_config(num_heads=[3, 3, 3, 3])), r"cannot run on 64x64"),
    ("cxrseg-train-output-is-the-data", "cli", lambda ws: cxrseg_train(ws, "--output_dir", str(ws / "data")),
     r"is also an input"),
    # cxrseg: command lines
    ("no-command", "cli", lambda ws: [], r"^cxrseg: the following arguments are required: COMMAND"),
    ("bad-int", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--batch-size", "x"),
     r"^cxrseg predict: argument --batch-size: invalid int value: 'x'"),
    ("zero-batch", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--batch-size", "0"), r"must be at least 1"),
    ("bad-choice", "cli", lambda ws: ["env", "--device", "tpu"], r"^cxrseg env: argument --device: invalid choice"),
    # cxrseg predict
    ("predict-out-is-a-file", "cli", lambda ws: predict(ws, "--out", str(ws / "user.csv")), r"user\.csv is a file"),
    ("predict-out-in-input", "cli", lambda ws: predict(ws, "--out", str(ws / "data/images/train/out")),
     r"lies inside the input"),
    ("predict-out-users-folder", "cli", lambda ws: predict(ws, "--out", str(ws / "user")), r"cxrseg did not write"),
    ("predict-submission-users-file", "cli",
     lambda ws: predict(ws, "--out", str(ws / "p"), "--submission", str(ws / "user.csv")),
     r"user\.csv exists and cxrseg did not write it"),
    ("predict-submission-folder", "cli",
     lambda ws: predict(ws, "--out", str(ws / "p"), "--submission", str(ws / "user")), r"user is a folder"),
    ("predict-bad-postprocess", "cli",
     lambda ws: predict(ws, "--out", str(ws / "p"), "--postprocess", str(ws / "bad.json")),
     r"bad\.json: not valid JSON"),
    ("predict-bad-device", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--device", "toaster"),
     r"--device 'toaster' is not a device"),
    ("predict-missing-gpu", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--device", "cuda:99"),
     r"--device cuda:99: this machine has"),
    ("predict-ensemble-other-labels", "cli",
     lambda ws: predict(ws, "--model", str(ws / "multilabel_model"), "--out", str(ws / "p")),
     r"^Ensemble members must predict the same classes: .*multilabel_model predicts"),
    ("predict-missing-postprocess", "cli",
     lambda ws: predict(ws, "--out", str(ws / "p"), "--postprocess", str(ws / "nothere.json")),
     r"^Post-processing file .*nothere\.json does not exist"),
    ("predict-bad-precision", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--precision", "fp8"),
     r"^cxrseg predict: argument --precision: invalid choice"),
    ("predict-no-model", "cli", lambda ws: ["predict", "--model", str(ws / "nothere"), "--input", str(ws / "data"),
                                            "--out", str(ws / "p")], r"nothere' is neither a local model folder"),
    ("predict-weights-one-model", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--ensemble-weights", "1", "2"),
     r"need several models or a CV folder"),
    ("predict-bad-dicom-seg", "cli", lambda ws: predict(ws, "--out", str(ws / "p"), "--dicom-seg", "bits"),
     r"^cxrseg predict: argument --dicom-seg: invalid choice"),
    ("average-no-checkpoints", "cli",
     lambda ws: ["average", "--model", str(ws / "model"), "--last", "2", "--out", str(ws / "averaged")], r"checkpoint"),
    # cxrseg evaluate, visualize, push, make-demo-data
    ("evaluate-bad-postprocess", "cli",
     lambda ws: ["evaluate", "--model", str(ws / "model"), "--data", str(ws / "data"), "--num-workers", "0",
                 "--postprocess", str(ws / "bad.json"), "--out", str(ws / "e")], r"bad\.json.*Fix it or remove it"),
    ("evaluate-bad-score-size", "cli",
     lambda ws: ["evaluate", "--model", str(ws / "model"), "--data", str(ws / "data"), "--score-size", "huge",
                 "--out", str(ws / "e")], r"^cxrseg evaluate: argument --score-size: invalid choice"),
    ("evaluate-split-the-data-lacks", "cli",
     lambda ws: ["evaluate", "--model", str(ws / "model"), "--data", str(ws / "data"), "--split", "test", "--out",
                 str(ws / "e")], r"data has no split 'test': its splits are train .*leave --split out"),
    ("evaluate-out-is-data", "cli", lambda ws: ["evaluate", "--model", str(ws / "model"), "--data", str(ws / "data"),
                                                "--split", "train", "--out", str(ws / "data")], r"is also an input"),
    ("evaluate-out-users-folder", "cli",
     lambda ws: ["evaluate", "--model", str(ws / "model"), "--data", str(ws / "data"), "--split", "train", "--out",
                 str(ws / "user")], r"cxrseg did not write"),
    ("visualize-over-users-picture", "cli",
     lambda ws: ["visualize", "curves", "--model", str(ws / "run"), "--out", str(ws / "user.png")],
     r"user\.png exists and cxrseg did not write it"),
    ("visualize-over-its-input", "cli",
     lambda ws: ["visualize", "features", "--model", str(ws / "model"), "--image",
                 str(ws / "data/images/train/demo_00001.png"), "--out", str(ws / "data/images/train/demo_00001.png")],
     r"is also an input"),
    ("visualize-into-a-folder", "cli",
     lambda ws: ["visualize", "predictions", "--model", str(ws / "model"), "--data", str(ws / "data"), "--split",
                 "train", "--out", str(ws / "user")], r"user is a folder"),
    ("visualize-zero-images", "cli",
     lambda ws: ["visualize", "predictions", "--model", str(ws / "model"), "--data", str(ws / "data"), "--n", "0"],
     r"--n: must be at least 1"),
    ("push-not-a-model", "cli", lambda ws: ["push", "--model", str(ws / "user"), "--repo-id", "me/x"],
     r"not a saved model folder"),
    ("demo-data-exists", "cli", lambda ws: ["make-demo-data", "--out", str(ws / "user")], r"user already exists"),
    ("demo-data-none", "cli", lambda ws: ["make-demo-data", "--out", str(ws / "d"), "--num-images", "0"],
     r"at least 1, got 0"),
    # cxrseg prepare: never into, over or around its inputs, never over a user's folder
    ("prepare-out-is-input", "cli", lambda ws: prepare(ws, "--out", str(ws / "raw/images"), "--overwrite"),
     r"is also an input"),
    ("prepare-out-holds-input", "cli", lambda ws: prepare(ws, "--out", str(ws / "raw"), "--overwrite"),
     r"holds the input"),
    ("prepare-out-in-input", "cli", lambda ws: prepare(ws, "--out", str(ws / "raw/images/prepared")),
     r"lies inside the input"),
    ("prepare-over-users-folder", "cli", lambda ws: prepare(ws, "--out", str(ws / "user"), "--overwrite"),
     r"cxrseg did not write"),
    ("prepare-nothing-to-write", "cli",
     lambda ws: ["prepare", "folder", "--images", str(ws / "empty/images"), "--masks", str(ws / "raw/masks"), "--out",
                 str(ws / "p")], r"No image could be written: 24 problems \(missing_image: 24\)"),
    ("prepare-unreadable-labels", "cli",
     lambda ws: prepare(ws, "--out", str(ws / "p"), "--labels", str(ws / "bad.json")),
     r"bad\.json: cannot read the labels JSON"),
    ("prepare-labels-without-background", "cli",
     lambda ws: prepare(ws, "--out", str(ws / "p"), "--labels", str(ws / "labels_bad.json")),
     r"labels_bad\.json: key 'names': a single-label set needs 2\.\.255 names with 'background' first"),
    ("prepare-bad-patient-ids", "cli",
     lambda ws: prepare(ws, "--out", str(ws / "p"), "--patient-ids", str(ws / "user.csv")),
     r"user\.csv: needs the columns image_id and PatientID"),
    ("app-bad-limit", "cli", lambda ws: ["app", "--model", str(ws / "model"), "--max-megapixels", "0"],
     r"^--max-megapixels must be a positive number"),
    ("app-missing-model", "cli", lambda ws: ["app", "--model", str(ws / "nothere"), "--port", "0"], r"nothere"),
    ("prepare-chestxdet-bad-json", "cli",
     lambda ws: ["prepare", "chestxdet", "--images", str(ws / "raw/images"), "--annotations", str(ws / "bad.json"),
                 "--out", str(ws / "p")], r"bad\.json: cannot read the annotation JSON"),
    ("prepare-missing-csv", "cli",
     lambda ws: ["prepare", "siim", "--dicom-dir", str(ws / "empty"), "--rle-csv", str(ws / "nothere.csv"), "--out",
                 str(ws / "p")], r"nothere\.csv: cannot read the RLE CSV"),
    # cxrseg prepare siim: a malformed RLE CSV ends in one line naming the file and line
    *[(f"prepare-siim-{name}", "cli", lambda ws, name=name: ["prepare", "siim", "--dicom-dir", str(ws / "empty"),
                                                              "--rle-csv", str(ws / f"{name}.csv"), "--out",
                                                              str(ws / "p")], message)
      for name, message in [
          ("semicolon", r"semicolon\.csv: expected the columns ImageId and EncodedPixels"),
          ("fields", r"fields\.csv, line 3: expected 2 fields, found 3"),
          ("traversal", r"traversal\.csv, ImageId '\.\./\.\./etc/x': .* is not a plain file name"),
          ("no_id", r"no_id\.csv, line 2: empty ImageId"),
          ("binary", r"binary\.csv: (cannot read the RLE CSV|expected the columns)"),
      ]],
    ("prepare-zero-processes", "cli", lambda ws: prepare(ws, "--out", str(ws / "p"), "--num-proc", "0"),
     r"--num-proc: must be at least 1"),
]  # fmt: skip


@pytest.mark.parametrize("entry, argv, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_user_error_is_one_line_exit_2_and_changes_nothing(ws, entry, argv, message, capsys):
    before = snapshot(ws)
    status = (train_main if entry == "train" else cli_main)(argv(ws))
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and "\r" not in line]  # progress bars redraw with \r
    assert status == 2, err
    # one message: its line, then at most some indented detail (e.g. the first problems of a prepare run)
    assert lines[0].startswith("error: ") and all(line.startswith("  ") for line in lines[1:]), err
    assert "Traceback" not in err and "usage:" not in err
    assert re.search(message, lines[0].removeprefix("error: ")), err
    assert snapshot(ws) == before


def run(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


@pytest.mark.slow
def test_real_entry_points_print_one_line_and_cxrseg_debug_shows_the_traceback(ws):
    """As a user sees it: run_train.py and `python -m cxrseg` in subprocesses."""
    result = run(sys.executable, "run_train.py", "--config", str(ws / "wrong_type.yaml"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: num_train_epochs in {ws / 'wrong_type.yaml'}: 'three' is not a valid number (could not convert string "
        "to float: 'three')."
    ]
    result = run(sys.executable, "-m", "cxrseg", "make-demo-data", "--out", str(ws / "user"), CXRSEG_DEBUG="1")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "OutputError" in result.stderr
    assert result.stderr.splitlines()[-1] == f"error: {ws / 'user'} already exists; remove it or choose another --out."
