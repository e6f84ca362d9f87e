"""Checkpoint averaging (cxrseg average): the averaged tensors are the mean of the checkpoints', BatchNorm statistics
are those of the training images under the averaged weights, and the folder loads like any model; a CV folder is
averaged fold by fold into a CV folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import UperNetForSemanticSegmentation

from cxrseg.cli import main
from cxrseg.config import parse_recipe, save_recipe
from cxrseg.data.prior import load_prior_mask, save_prior_mask
from cxrseg.errors import CheckpointError
from cxrseg.inference.cv_folder import read_cross_validation
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.synthetic import make_demo_data
from cxrseg.training.averaging import average_run
from tests.conftest import TINY_MODEL_CONFIG, save_tiny_model

NUM_IMAGES = 6
CLEAN_EPOCH = ("--augmentation", "none", "--balanced_sampling", "false")  # each training image once, as stored


def fake_run(folder: Path, data: Path, steps=(2, 4, 6), recipe_args: tuple[str, ...] = ()) -> Path:
    """A training output folder as a run leaves it: recipe.yaml, splits.json, complete checkpoint-N folders (tiny
    models with different weights)."""
    recipe = parse_recipe([
        "--config", "recipe/demo.yaml", "--generate_demo_data", "false", "--data_dir", str(data),
        "--output_dir", str(folder), "--model_config", json.dumps(TINY_MODEL_CONFIG), "--image_size", "64",
        *recipe_args,
    ])  # fmt: skip
    folder.mkdir(parents=True)
    save_recipe(recipe, folder / "recipe.yaml")
    ids = sorted(p.stem for p in (data / "images" / "train").iterdir())
    (folder / "splits.json").write_text(json.dumps({"train": ids[:-2], "val": ids[-2:]}))
    for seed, step in enumerate(steps):
        checkpoint = save_tiny_model(folder / f"checkpoint-{step}", seed=seed)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", num_images=NUM_IMAGES, size=64, seed=0)


def bn_inputs_statistics(model: UperNetForSemanticSegmentation, pixel_values: torch.Tensor, name: str):
    """(mean, unbiased variance) per channel of what the BatchNorm ``name`` receives when ``model`` runs on the whole
    batch in training mode (every BatchNorm normalising with the batch's statistics): what update_bn must store
    when the batch holds every training image."""
    seen = {}
    model = copy.deepcopy(model)  # a forward in training mode updates the running statistics
    module = dict(model.named_modules())[name]
    handle = module.register_forward_hook(lambda m, inputs, output: seen.setdefault("x", inputs[0].detach()))
    model.train()
    with torch.no_grad():
        model(pixel_values)
    handle.remove()
    x = seen["x"]
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)


def test_average_of_the_last_checkpoints_with_batchnorm_recomputed(tmp_path, data):
    from cxrseg.data.dataset import load_training_data
    from cxrseg.labels import PNEUMOTHORAX

    # each training image once, unaugmented: the statistics can be checked against one batch of every image
    run = fake_run(tmp_path / "run", data, recipe_args=CLEAN_EPOCH)
    out = tmp_path / "averaged"
    argv = ["average", "--model", str(run), "--last", "2", "--out", str(out), "--batch-size", "8", "--device", "cpu"]
    assert main(argv) == 0
    model = UperNetForSemanticSegmentation.from_pretrained(out)  # a normal model folder
    averaged = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    older, newer = (
        UperNetForSemanticSegmentation.from_pretrained(run / f"checkpoint-{s}").state_dict() for s in (4, 6)
    )
    statistics = [key for key in averaged if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) >= 3  # UperNet's heads hold BatchNorm layers
    for key, tensor in averaged.items():
        if key not in statistics:
            torch.testing.assert_close(tensor, (older[key] + newer[key]) / 2, rtol=0, atol=1e-6)  # every tensor
    # BatchNorm: recomputed on the training split under the averaged weights (one batch holds every image), not the
    # mean of the checkpoints' statistics.
    recipe = parse_recipe(["--config", str(run / "recipe.yaml"), "--augmentation", "none"])
    processor = load_segmenter(out, device="cpu").preprocessor
    train = load_training_data(recipe.data, PNEUMOTHORAX, run / "splits.json", mean=processor.mean, std=processor.std)
    pixel_values = torch.stack([train.train[i]["pixel_values"] for i in range(len(train.train))])
    assert len(pixel_values) == NUM_IMAGES - 2
    for name in [key.removesuffix(".running_mean") for key in statistics if key.endswith("running_mean")]:
        expected_mean, expected_var = bn_inputs_statistics(model, pixel_values, name)
        torch.testing.assert_close(averaged[f"{name}.running_mean"], expected_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(averaged[f"{name}.running_var"], expected_var, rtol=1e-4, atol=1e-5)
        mean_of_checkpoints = (older[f"{name}.running_mean"] + newer[f"{name}.running_mean"]) / 2
        assert not torch.allclose(averaged[f"{name}.running_mean"], mean_of_checkpoints)
    assert json.loads((out / "averaging.json").read_text()) == {
        "checkpoints": ["checkpoint-4", "checkpoint-6"],
        "batchnorm_images": NUM_IMAGES - 2,
    }
    assert (
        (out / "recipe.yaml").is_file()
        and (out / "splits.json").is_file()
        and (out / "preprocessor_config.json").is_file()
    )
    assert not (out / "postprocess.json").exists()


def test_batchnorm_sees_what_training_fed_the_network(tmp_path, data):
    """The demo recipe's balanced sampler and augmentation draw the BatchNorm images (one epoch, seeded): their
    count is the sampler's, the statistics differ from clean images' and a rerun gives the same ones."""
    from cxrseg.data.dataset import build_sampler, load_training_data
    from cxrseg.labels import PNEUMOTHORAX

    runs = {
        "trained": fake_run(tmp_path / "run", data),
        "clean": fake_run(tmp_path / "clean", data, recipe_args=CLEAN_EPOCH),
    }
    averaged = {}
    for name, run in {**runs, "again": runs["trained"]}.items():
        out = average_run(run, tmp_path / f"averaged-{name}", last=2)
        averaged[name] = (UperNetForSemanticSegmentation.from_pretrained(out).state_dict(), out)
    recipe = parse_recipe(["--config", str(runs["trained"] / "recipe.yaml")])
    train = load_training_data(
        recipe.data, PNEUMOTHORAX, runs["trained"] / "splits.json", mean=[0.5] * 3, std=[0.5] * 3
    )
    epoch = len(build_sampler(recipe.sampling, PNEUMOTHORAX, train, seed=recipe.training.seed)[0])
    assert recipe.sampling.balanced_sampling and recipe.data.augmentation == "standard"
    assert json.loads((averaged["trained"][1] / "averaging.json").read_text())["batchnorm_images"] == epoch
    statistics = [key for key in averaged["trained"][0] if key.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(averaged["trained"][0][key], averaged["again"][0][key]) for key in statistics)  # seeded
    assert not all(torch.allclose(averaged["trained"][0][key], averaged["clean"][0][key]) for key in statistics)


def test_too_few_checkpoints_and_a_cv_folder(tmp_path, data):
    run = fake_run(tmp_path / "run", data, steps=(2,))
    with pytest.raises(CheckpointError, match=r"1 complete checkpoint.*--save_total_limit null"):
        average_run(run, tmp_path / "out", last=2)
    assert not (tmp_path / "out").exists()
    # A CV folder of two folds: each fold averaged, the output a CV folder that reads as one.
    cv = tmp_path / "cv"
    for fold in range(2):
        fake_run(cv / f"fold_{fold}", data, steps=(3, 5))
        (cv / f"fold_{fold}" / "cv_fold.json").write_text(json.dumps({"fold": fold, "num_folds": 2, "metrics": {}}))
    folds = [json.loads((cv / f"fold_{k}" / "splits.json").read_text()) for k in range(2)]
    (cv / "splits.json").write_text(json.dumps(folds))
    (cv / "cv.json").write_text(json.dumps({"num_folds": 2, "folds": ["fold_0", "fold_1"]}))
    (cv / "recipe.yaml").write_text((cv / "fold_0" / "recipe.yaml").read_text())
    (cv / "ensemble.json").write_text(json.dumps({"weights": [2, 1]}))
    for fold in range(2):  # each fold's prior mask (the baseline of its training split) goes with its averaged model
        save_prior_mask(cv / f"fold_{fold}", np.eye(64, dtype=bool)[None] if fold else np.zeros((1, 64, 64), bool))
    out = average_run(cv, tmp_path / "cv_averaged", last=2, max_bn_images=2)
    averaged = read_cross_validation(out)
    assert [folder.name for folder in averaged.fold_dirs] == ["fold_0", "fold_1"]
    assert json.loads((out / "ensemble.json").read_text()) == {"weights": [2, 1]}
    for fold, folder in enumerate(averaged.fold_dirs):
        assert json.loads((folder / "averaging.json").read_text())["batchnorm_images"] == 2
        assert (load_prior_mask(folder, 1, 64)[0] == np.eye(64, dtype=bool) * fold).all()
        UperNetForSemanticSegmentation.from_pretrained(folder)
