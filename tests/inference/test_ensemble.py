"""Ensembles: one member equals that model exactly, two average their probabilities, members at other working sizes
are resized before averaging, members with other labels are refused by name, and a CV folder (or several --model
values) drives predict with its out-of-fold post-processing and a Kaggle submission."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from cxrseg.cli import main
from cxrseg.constants import FOLD_RESULT_FILENAME
from cxrseg.errors import ModelLoadError
from cxrseg.inference.cv_folder import fold_dir
from cxrseg.inference.ensemble import Ensemble, load_ensemble
from cxrseg.inference.segmenter import load_segmenter, main_logits
from cxrseg.labels import LabelSet
from cxrseg.postprocessing.rules import PostProcess
from tests.conftest import save_tiny_model
from tests.training.test_cross_validation import untrained_cv_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [load_segmenter(save_tiny_model(root / f"m{seed}", seed=seed), device="cpu") for seed in (1, 2)]


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_an_ensemble_of_one_model_is_that_model_exactly(models, pixel_values, tta):
    ensemble = Ensemble([models[0]], None, "one")
    assert torch.equal(ensemble.probabilities(pixel_values, tta), models[0].probabilities(pixel_values, tta))
    assert ensemble.preprocessor == models[0].preprocessor and ensemble.output_names == models[0].output_names


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_an_ensemble_of_two_is_the_mean_of_their_probabilities(models, pixel_values, tta):
    mean = (models[0].probabilities(pixel_values, tta) + models[1].probabilities(pixel_values, tta)) / 2
    probs = Ensemble(models, None, "two").probabilities(pixel_values, tta)
    assert torch.equal(probs, mean) and not torch.equal(probs, models[0].probabilities(pixel_values, tta))


def test_members_at_another_size_predict_at_theirs_and_are_resized(models, pixel_values, tmp_path):
    small = load_segmenter(save_tiny_model(tmp_path / "small", image_size=32, seed=5), device="cpu")
    ensemble = Ensemble([small, models[0]], None, "mixed")
    assert ensemble.image_size == 64  # the largest member's
    area = F.interpolate(pixel_values, size=(32, 32), mode="area")  # same mean/std: only resized
    small_probs = F.interpolate(small.probabilities(area), size=(64, 64), mode="bilinear", align_corners=False)
    expected = (small_probs.clamp(0, 1) + models[0].probabilities(pixel_values)) / 2
    assert torch.allclose(ensemble.probabilities(pixel_values), expected, atol=1e-6)


def test_members_with_other_labels_are_named(models, tmp_path):
    other = save_tiny_model(tmp_path / "nodules", LabelSet("custom", ("Effusion", "Nodule"), multilabel=True))
    with pytest.raises(ModelLoadError, match=r"nodules predicts \['Effusion', 'Nodule'\] but .*m1 predicts"):
        Ensemble([models[0], load_segmenter(other, device="cpu")], None, "mixed")
    code = main(["predict", "--model", str(models[0].source), str(other), "--input", "x", "--out", str(tmp_path)])
    assert code == 2  # the CLI reports it as a user error


def test_predict_with_a_cv_folder_uses_its_out_of_fold_rule_and_writes_a_submission(tmp_path, demo_root, capsys):
    out = tmp_path / "cv"
    untrained_cv_folder(demo_root, out, num_folds=2)
    PostProcess(0.5, 3, 0.4, image_size=64).save(out)  # as evaluate --search-postprocess on the CV folder writes it
    ensemble = load_ensemble([out], device="cpu")
    assert [m.source for m in ensemble.members] == [str(fold_dir(out, k)) for k in range(2)]
    assert ensemble.postprocess == PostProcess(0.5, 3, 0.4, image_size=64) and ensemble.model_dir == out
    assert load_ensemble([out, fold_dir(out, 0)], device="cpu").postprocess is None  # several: only --postprocess

    images = demo_root / "images" / "train"
    args = [
        "predict",
        "--model",
        str(out),
        "--input",
        str(images),
        "--out",
        str(tmp_path / "pred"),
        "--num-workers",
        "0",
    ]
    assert main([*args, "--submission", str(tmp_path / "submission.csv")]) == 0
    with (tmp_path / "submission.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["ImageId"] for row in rows] == sorted(p.stem for p in images.iterdir())
    assert "Predicted 24 of 24 images" in capsys.readouterr().out

    (fold_dir(out, 1) / FOLD_RESULT_FILENAME).unlink()
    assert main(args) == 2
    assert "fold_1" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_ensemble([fold_dir(out, 0)], postprocess_path=tmp_path / "missing.json")


def brute_logits(segmenter, pixel_values: torch.Tensor, tta: str) -> torch.Tensor:
    """The model's logits straight from its forward pass, mirror averaged for hflip (what the ensemble should use)."""
    with torch.no_grad():
        logits = main_logits(segmenter.model, pixel_values).float()
        if tta == "hflip":
            logits = (logits + main_logits(segmenter.model, pixel_values.flip(-1)).float().flip(-1)) / 2
    return logits


@pytest.fixture(scope="module")
def confident_models(tmp_path_factory):
    """Two tiny models whose classifiers are scaled up, so that their probabilities leave the linear range around
    0.5 where averaging logits and averaging probabilities agree."""
    root = tmp_path_factory.mktemp("confident")
    members = [load_segmenter(save_tiny_model(root / f"m{seed}", seed=seed), device="cpu") for seed in (3, 4)]
    with torch.no_grad():
        for member in members:
            member.model.decode_head.classifier.weight.mul_(40)
    return members


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_weighted_ensembles_average_probabilities_or_logits_as_brute_force_does(confident_models, pixel_values, tta):
    models, weights = confident_models, (3.0, 1.0)
    p = [m.probabilities(pixel_values, tta) for m in models]
    weighted = Ensemble(models, None, "two", weights=weights).probabilities(pixel_values, tta)
    assert torch.allclose(weighted, (3 * p[0] + p[1]) / 4, atol=1e-7)
    assert not torch.allclose(weighted, (p[0] + p[1]) / 2, atol=1e-4)  # the weights matter
    logits = [brute_logits(m, pixel_values, tta) for m in models]
    expected = ((3 * logits[0] + logits[1]) / 4).softmax(dim=1)[:, 1:]  # softmax without background, once
    by_logits = Ensemble(models, None, "two", weights=weights, average="logits").probabilities(pixel_values, tta)
    assert torch.allclose(by_logits, expected, atol=1e-6) and not torch.allclose(by_logits, weighted, atol=1e-4)
    one = Ensemble([models[0]], None, "one", average="logits").probabilities(pixel_values, tta)
    assert torch.allclose(one, logits[0].softmax(dim=1)[:, 1:], atol=1e-6)  # one member: its (TTA-mean) logits
    if tta == "none":
        assert torch.allclose(one, p[0], atol=1e-6)  # ... which without TTA is that model
    with pytest.raises(ModelLoadError, match="1 ensemble weights for 2 members"):
        Ensemble(models, None, "two", weights=(1.0,))
    with pytest.raises(ModelLoadError, match="not all 0"):
        Ensemble(models, None, "two", weights=(0.0, 0.0))


def test_a_cv_folders_ensemble_json_sets_weights_and_the_cli_overrides_it(tmp_path, demo_root, capsys):
    out = tmp_path / "cv"
    untrained_cv_folder(demo_root, out, num_folds=2)
    assert load_ensemble([out], device="cpu").weights is None  # no ensemble.json: equal
    (out / "ensemble.json").write_text(json.dumps({"weights": [0.25, 0.75], "average": "logits"}))
    ensemble = load_ensemble([out], device="cpu")
    assert ensemble.weights == (0.25, 0.75) and ensemble.average == "logits"
    assert load_ensemble([out], device="cpu", weights=[1, 1], average="probabilities").weights == (1.0, 1.0)
    data = ["evaluate", "--model", str(out), "--data", str(demo_root), "--split", "train", "--num-workers", "0"]
    assert main([*data, "--out", str(tmp_path / "e1"), "--ensemble-weights", "1", "2", "3"]) == 2
    assert "3 ensemble weights for 2 members" in capsys.readouterr().err
    assert main([*data, "--out", str(tmp_path / "e2"), "--ensemble-weights", "1", "0"]) == 0
    fold0 = ["evaluate", "--model", str(fold_dir(out, 0)), "--data", str(demo_root), "--split", "train"]
    assert (
        main([*fold0, "--out", str(tmp_path / "f0"), "--num-workers", "0", "--ensemble-average", "probabilities"]) == 2
    )
    # weight 0 for fold 1: the ensemble predicts exactly as fold 0 alone
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    alone = load_segmenter(fold_dir(out, 0), device="cpu").probabilities(x)
    for average in ("probabilities", "logits"):
        ensemble = load_ensemble([out], device="cpu", weights=[1, 0], average=average)
        assert torch.allclose(ensemble.probabilities(x), alone, atol=1e-6)
    (out / "ensemble.json").write_text(json.dumps({"weights": "heavy"}))
    with pytest.raises(ModelLoadError, match=r"ensemble\.json: weights must be a list of numbers"):
        load_ensemble([out], device="cpu")
