"""Any label set, from `cxrseg prepare folder` to the Hub, as a user with their own radiographs and expert masks
would go: lung fields and heart, named by the user's labels.json ("lung field", "heart"), images in the formats
real data comes in (palette PNGs with an inverted gray palette, 16-bit PNGs, JPEGs), a separate held-out folder
prepared with the default split name. Every output names the user's classes: config.json, metrics, the card,
`cxrseg evaluate`, `cxrseg predict`, the web app and transformers' pipeline(). No task is named anywhere: the data's
labels.json decides, and a recipe that names another is one line, exit 2, before any work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from transformers import pipeline

from cxrseg.cli import main as cxrseg_main
from cxrseg.hub.push import push_folder
from cxrseg.labels import labels_from_config, pack_multilabel, unpack_multilabel
from cxrseg.synthetic import synthetic_anatomy_radiograph
from cxrseg.training.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG

SIZE = 64
CLASSES = ["lung field", "heart"]
LABEL_SETS = {  # the user's labels.json: one class per pixel (softmax), or overlapping structures (one sigmoid each)
    "softmax": {"task": "lungs-and-heart", "names": ["background", *CLASSES]},
    "multi-label": {"task": "scr", "names": CLASSES, "multilabel": True},
}


def write_user_folder(root: Path, prefix: str, count: int, seed: int, kind: str) -> None:
    """``count`` radiographs with their masks, the images in three real-world formats. Softmax: class indices
    (the heart over the lung); multi-label: 16-bit bit fields where the lung field runs behind the heart."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(count):
        image, classes = synthetic_anatomy_radiograph(seed + i, SIZE)
        name = f"{prefix}{i:03d}"
        if i % 3 == 0:  # JSRT-like palette PNG: indices 255 - gray, an inverted gray palette
            palette = Image.fromarray(255 - image, mode="L").convert("P")
            palette.putpalette([level for k in range(256) for level in (255 - k,) * 3])
            palette.save(root / "images" / f"{name}.png")
        elif i % 3 == 1:
            cv2.imwrite(str(root / "images" / f"{name}.png"), image.astype(np.uint16) * 257)  # 16-bit
        else:
            cv2.imwrite(str(root / "images" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if kind == "multi-label":
            classes = pack_multilabel(np.stack([classes > 0, classes == 2]))
        cv2.imwrite(str(root / "masks" / f"{name}.png"), classes)
    (root / "labels.json").write_text(json.dumps(LABEL_SETS[kind]))


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """The user's folders, for each kind of label set: ``<kind>/train-raw`` (24 pairs) and ``<kind>/held-out-raw``
    (6 other patients), each with its labels.json."""
    root = tmp_path_factory.mktemp("user")
    for kind in LABEL_SETS:
        write_user_folder(root / kind / "train-raw", "JPCLN", 24, seed=100, kind=kind)
        write_user_folder(root / kind / "held-out-raw", "MCUCXR", 6, seed=900, kind=kind)
    return root


RECIPE = {
    "model_name_or_path": None,
    "model_config": TINY_MODEL_CONFIG,
    "image_size": SIZE,
    "augmentation": "none",
    "val_fraction": 0.25,
    "balanced_sampling": True,  # lungs and heart are in every image: nothing to balance, said once
    "num_train_epochs": 2,
    "per_device_train_batch_size": 6,
    "per_device_eval_batch_size": 6,
    "learning_rate": 2.0e-3,
    "logging_steps": 1,
    "use_cpu": True,
    "mixed_precision": "no",
    "report_to": "none",
    "save_total_limit": 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", LABEL_SETS)
def test_a_label_set_of_your_own_from_prepare_to_pipeline(kind, user, tmp_path, capsys, caplog, hub):
    labels = LABEL_SETS[kind]
    # ------------------------------------------------------------------ prepare: the user's own label set
    data, held_out = tmp_path / "data", tmp_path / "held-out"
    for raw, out in ((user / kind / "train-raw", data), (user / kind / "held-out-raw", held_out)):
        argv = ["prepare", "folder", "--images", str(raw / "images"), "--masks", str(raw / "masks")]
        assert cxrseg_main([*argv, "--labels", str(raw / "labels.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Wrote 24 images" in printed and "Wrote 6 images" in printed
    assert "image: palette → gray through its palette (inverted gray palette): 8" in printed
    assert "image: 16/32-bit gray → 8-bit (linear min-max stretch): 8" in printed

    # ------------------------------------------------------------------ train: no task named, the data decides
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "data_dir": str(data), "output_dir": str(tmp_path / "model")}))
    wrong = ["--config", str(recipe), "--task", "pneumothorax", "--output_dir", str(tmp_path / "wrong")]
    assert train_main(wrong) == 2  # a recipe naming another task: one line, nothing written
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "task is 'pneumothorax' but" in error and labels["task"] in error
    assert not (tmp_path / "wrong").exists()
    with caplog.at_level(logging.WARNING, logger="cxrseg"):
        assert train_main(["--config", str(recipe)]) == 0
    said = [r.getMessage() for r in caplog.records if "nothing to balance" in r.getMessage()]
    quantifier = "all of" if kind == "multi-label" else "one of"
    assert len(said) == 1 and f"every training image holds {quantifier} lung field, heart" in said[0]
    model = tmp_path / "model"
    config = json.loads((model / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(labels["names"]))] == labels["names"]
    assert labels_from_config(config).task == labels["task"]
    assert labels_from_config(config).multilabel == (kind == "multi-label")
    saved = (model / "recipe.yaml").read_text()
    assert "# Set by the run: balanced_sampling: false (every training image holds" in saved
    assert yaml.safe_load(saved)["balanced_sampling"] is False and yaml.safe_load(saved)["task"] is None
    results = json.loads((model / "all_results.json").read_text())
    for name in CLASSES:
        assert {f"eval_dice/{name}", f"eval_prior_mask_dice/{name}", f"eval_empty_mask_kaggle_dice/{name}"} <= set(
            results
        )
    assert (model / "prior_mask.png").is_file()

    # ------------------------------------------------------------------ evaluate: held-out data scored whole
    assert cxrseg_main(["evaluate", "--model", str(model), "--data", str(held_out)]) == 0
    printed = capsys.readouterr().out
    assert "baselines: empty mask" in printed and "prior mask" in printed and "lung field" in printed
    metrics = json.loads((model / "evaluation" / "held-out" / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and "not trained on" in metrics["images"]
    assert {"prior_mask_dice/heart", "empty_mask_kaggle_dice/lung field", "dice/lung field"} <= metrics.keys()
    assert cxrseg_main(["evaluate", "--model", str(model), "--data", str(data)]) == 0  # its own validation images
    own = json.loads((model / "evaluation" / "val" / "metrics.json").read_text())
    assert own["dice"] == pytest.approx(results["eval_dice"], abs=1e-6)
    assert own["prior_mask_dice"] == pytest.approx(results["eval_prior_mask_dice"], abs=1e-6)
    assert cxrseg_main(["evaluate", "--model", str(model), "--data", str(held_out), "--split", "test"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bars: one line
    assert "has no split 'test'" in error and "its splits are train" in error and "leave --split out" in error

    # ------------------------------------------------------------------ predict: the user's raw files
    raw_images = user / kind / "held-out-raw" / "images"
    predicted = tmp_path / "p"
    assert cxrseg_main(["predict", "--model", str(model), "--input", str(raw_images), "--out", str(predicted)]) == 0
    assert json.loads((predicted / "labels.json").read_text())["names"] == CLASSES
    packed = cv2.imread(str(predicted / "masks" / "MCUCXR000.png"), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16 and packed.shape == (SIZE, SIZE) and unpack_multilabel(packed, 2).shape[2] == 2
    assert (predicted / "overlays" / "MCUCXR002.png").is_file()  # the JPEG

    # ------------------------------------------------------------------ the web app names the classes
    from cxrseg.app.web import load_app  # deferred: Gradio is optional
    from tests.app.test_app import segment_in_process

    table = segment_in_process(load_app(str(model), device="cpu"), raw_images / "MCUCXR001.png")[3]
    assert 'data-finding="lung field"' in table and 'data-finding="heart"' in table

    # ------------------------------------------------------------------ card, Hub, pipeline()
    push_folder(model, "me/lungs")
    card = (hub.repo("me/lungs") / "README.md").read_text()
    assert "segmenting **lung field, heart**" in card and "| lung field |" in card and "prior_mask_dice" in card
    assert "prior_mask.png" in hub.files("me/lungs")
    assert ("sigmoid" in card) == (kind == "multi-label")  # the card's code reads the model as it was trained
    segmenter = pipeline("image-segmentation", model=str(model), device="cpu")
    found = segmenter(Image.open(raw_images / "MCUCXR000.png").convert("RGB"))
    assert found and {result["label"] for result in found} <= {"background", *CLASSES}


def test_the_anatomy_demo_data_is_a_label_set_of_its_own(tmp_path):
    root = cxrseg_main(["make-demo-data", "--task", "anatomy", "--out", str(tmp_path / "a"), "--num-images", "6",
                        "--size", "64"])  # fmt: skip
    assert root == 0
    assert json.loads((tmp_path / "a" / "labels.json").read_text()) == {
        "task": "anatomy",
        "names": ["background", "lung", "heart"],
        "multilabel": False,
    }
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / "a" / "masks" / "train").iterdir())]
    assert all(set(np.unique(mask)) == {0, 1, 2} for mask in masks)  # both structures in every image
    centres = [np.argwhere(mask == 2).mean(0) for mask in masks]
    assert np.ptp(np.array(centres), axis=0).max() > 3  # the heart is not in one place: the prior is no oracle


@pytest.mark.slow
def test_the_anatomy_demo_recipe_runs(tmp_path):
    """recipe/anatomy_demo.yaml (tiny model, 12 generated images, 1 epoch): the demo data is drawn, the model names
    lung and heart, and the baselines are reported beside its metrics."""
    argv = ["--config", "recipe/anatomy_demo.yaml", "--data_dir", str(tmp_path / "data"), "--demo_num_images", "12",
            "--image_size", "64", "--model_config", json.dumps(TINY_MODEL_CONFIG), "--num_train_epochs", "1",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert train_main(argv) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "lung", "2": "heart"} and config["cxrseg_task"] == "anatomy"
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert {"eval_dice/lung", "eval_dice/heart", "eval_prior_mask_dice/lung", "eval_prior_mask_dice/heart"} <= set(
        results
    )
