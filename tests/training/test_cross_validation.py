"""Cross-validation: recipe keys, the CV folder contract, out-of-fold metrics equal to the metrics of the folds'
predictions pooled, tuned-on-OOF and cross-validated post-processing checked by brute force, and a real CV run
interrupted in its second fold that resumes there."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from cxrseg.cli import main
from cxrseg.config import parse_recipe, save_recipe
from cxrseg.constants import CV_FILENAME, FOLD_RESULT_FILENAME
from cxrseg.data.dataset import index_training_source
from cxrseg.data.png_layout import index_layout
from cxrseg.errors import ModelLoadError, RecipeError
from cxrseg.evaluation.engine import EvaluationOptions
from cxrseg.evaluation.evaluate import evaluate
from cxrseg.evaluation.metrics import SegmentationMetrics, dice_score
from cxrseg.evaluation.out_of_fold import evaluate_out_of_fold
from cxrseg.evaluation.report import out_of_fold_summary
from cxrseg.evaluation.rule_search import TripletSearch, search_grid
from cxrseg.evaluation.stream import evaluation_loader, stream_predictions
from cxrseg.inference.cv_folder import fold_dir, read_cross_validation
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import PNEUMOTHORAX, get_labels
from cxrseg.postprocessing.rules import PostProcess
from cxrseg.synthetic import make_multilabel_demo_data
from cxrseg.training.cross_validation import (
    checkpoint_chosen_on,
    fold_recipe,
    fold_training_splits,
    mark_fold_finished,
    prepare_folds,
)
from cxrseg.training.train import main as train_main
from cxrseg.training.train import train_folds
from tests.conftest import TINY_MODEL_CONFIG, save_tiny_model
from tests.training.test_ddp import ROOT, free_port


def recipe_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", "recipe/demo.yaml", "--data_dir", str(data_dir), "--image_size", "64",
        "--model_config", json.dumps(TINY_MODEL_CONFIG), "--output_dir", str(out), "--report_to", "none", *extra,
    ]  # fmt: skip


MULTILABEL_SAMPLING = ("--negative_keep_ratio", "1.0", "--positive_weight", "1.0")  # demo.yaml's are single-label


def untrained_cv_folder(data_dir: Path, out: Path, num_folds: int = 3) -> list[dict]:
    """A CV folder as training leaves it (cv.json, splits.json, finished fold folders), with untrained tiny models
    (one seed per fold) instead of trained ones."""
    recipe = parse_recipe(recipe_args(data_dir, out, "--num_folds", str(num_folds)))
    folds = prepare_folds(recipe, PNEUMOTHORAX, index_training_source(recipe.data, PNEUMOTHORAX)[1])
    for k, fold in enumerate(folds):
        save_tiny_model(fold_dir(out, k), seed=k, splits=fold)
        mark_fold_finished(fold_dir(out, k), k, num_folds, {})
    return folds


def test_fold_keys_are_checked(tmp_path):
    with pytest.raises(RecipeError, match=r"fold must be 'all' or an index 0\.\.2 for num_folds: 3, got '3'"):
        parse_recipe(recipe_args(tmp_path, tmp_path, "--num_folds", "3", "--fold", "3"))
    with pytest.raises(RecipeError, match="fold: 1 needs num_folds"):
        parse_recipe(recipe_args(tmp_path, tmp_path, "--fold", "1"))
    with pytest.raises(RecipeError, match="num_folds must be at least 2"):
        parse_recipe(recipe_args(tmp_path, tmp_path, "--num_folds", "1"))
    recipe = parse_recipe(recipe_args(tmp_path, tmp_path, "--num_folds", "5", "--fold", "4"))
    assert (recipe.data.num_folds, recipe.data.fold) == (5, "4")
    assert parse_recipe(recipe_args(tmp_path, tmp_path)).data.num_folds is None  # today's single split


def test_bad_fold_index_and_overlapping_saved_folds_exit_2_before_any_work(tmp_path, demo_root, capsys):
    out = tmp_path / "cv"
    assert train_main(recipe_args(demo_root, out, "--num_folds", "3", "--fold", "3")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fold must be 'all' or an index 0..2") and "Traceback" not in err
    assert not out.exists()

    out.mkdir()
    ids = sorted(p.stem for p in (demo_root / "images" / "train").iterdir())
    overlapping = [{"train": ids[12:], "val": ids[:12]}, {"train": ids[:8], "val": ids[8:]}]
    (out / "splits.json").write_text(json.dumps(overlapping))
    assert train_main(recipe_args(demo_root, out, "--num_folds", "2")) == 2
    err = capsys.readouterr().err
    assert "splits.json" in err and "is in the validation sets of folds 0 and 1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["splits.json"]  # nothing trained, nothing written
    assert json.loads((out / "splits.json").read_text()) == overlapping


@pytest.fixture(scope="module")
def cv(tmp_path_factory, demo_root):
    out = tmp_path_factory.mktemp("cv") / "out"
    return out, untrained_cv_folder(demo_root, out)


def test_cv_folder_contract(cv, demo_root):
    out, folds = cv
    summary = json.loads((out / CV_FILENAME).read_text())
    assert summary["num_folds"] == 3 and summary["folds"] == ["fold_0", "fold_1", "fold_2"]
    assert "24 without a known patient" in summary["groups"] and summary["strata"] == "positives per fold"
    assert json.loads((out / "splits.json").read_text()) == folds
    run = read_cross_validation(out)
    assert run.fold_dirs == [out / f"fold_{k}" for k in range(3)] and run.folds == folds


def search_rule(probs, target, grid):
    """(winning rule, table) of the one-class :class:`TripletSearch` of ``grid`` over (probs, target)."""
    search = TripletSearch(*grid)
    search.update(probs, target)
    return search.compute(), search.table()


def test_out_of_fold_metrics_equal_the_metrics_of_the_pooled_fold_predictions(cv, demo_root, tmp_path):
    out, folds = cv
    result = evaluate_out_of_fold(
        out, demo_root, tmp_path / "oof", EvaluationOptions(batch_size=5, search=True), device="cpu"
    )
    metrics = result.metrics

    index = {row.image_id: row for row in index_layout(demo_root, "train", PNEUMOTHORAX)}
    probs, target, fold_of = [], [], []
    for k, fold in enumerate(folds):
        segmenter = load_segmenter(fold_dir(out, k), device="cpu")
        loader = evaluation_loader(segmenter, [index[i] for i in fold["val"]], batch_size=3)
        for batch in stream_predictions(segmenter, loader):
            probs.append(batch.probs[:, 0])
            target.append(batch.target[:, 0])
            fold_of += [k] * len(batch.image_ids)
        # each fold's own figures are what `cxrseg evaluate` gives the fold model on its validation split
        alone = evaluate(segmenter, demo_root, "val", tmp_path / f"fold{k}").metrics
        for key in ("dice", "iou", "kaggle_dice", "ap", "num_images"):
            assert metrics["folds"][k][key] == pytest.approx(alone[key], abs=1e-12), (k, key)
    probs, target, fold_of = torch.cat(probs), torch.cat(target), np.array(fold_of)
    assert len(probs) == 24 == metrics["num_images"]  # every image once

    pooled = SegmentationMetrics(threshold=0.5)
    pooled.update(probs, target)
    for key, value in pooled.compute().items():
        assert metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    dice = [m["dice"] for m in metrics["folds"]]
    assert metrics["fold_spread"]["dice"] == pytest.approx(
        {"mean": np.mean(dice), "std": np.std(dice, ddof=1), "min": min(dice), "max": max(dice)}
    )
    rows = (tmp_path / "oof" / "per_image.csv").read_text().splitlines()
    assert rows[0].endswith(",fold") and len(rows) == 25

    # Tuned on OOF: the search over all pooled OOF predictions, saved as the CV folder's postprocess.json.
    grid = search_grid(64)
    tuned, table = search_rule(probs, target, grid)
    assert result.best_postprocess == tuned == PostProcess.load(out / "postprocess.json")
    assert metrics["search"]["tuned_on_oof"]["kaggle_dice"] == pytest.approx(table[0]["kaggle_dice"], abs=1e-12)
    # Cross-validated: each fold's images under the rule tuned on the other folds' images.
    per_image = []
    for k in range(3):
        others = fold_of != k
        rule, _ = search_rule(probs[others], target[others], grid)
        masks = rule.apply(probs[~others])
        per_image += [dice_score(m, t) for m, t in zip(masks, target[~others].numpy())]
        assert metrics["search"]["cross_validated"]["folds"][k]["postprocess"] == rule.to_dict()
    assert metrics["search"]["cross_validated"]["kaggle_dice"] == pytest.approx(np.mean(per_image), abs=1e-12)


def test_multilabel_out_of_fold_metrics_and_per_class_rules_equal_brute_force(tmp_path):
    """ChestX-Det-like multi-label data: the OOF metrics per class are those of the pooled fold predictions, the
    rule tuned on OOF is each class's own search, and the cross-validated estimate of each class is its rules tuned
    on the other folds, scored image by image on this fold's."""
    labels = get_labels("chestxdet")
    data = make_multilabel_demo_data(tmp_path / "data", num_images=8, size=64, seed=2)
    out = tmp_path / "cv"
    recipe = parse_recipe(recipe_args(data, out, "--task", "chestxdet", "--num_folds", "2", *MULTILABEL_SAMPLING))
    folds = prepare_folds(recipe, labels, index_training_source(recipe.data, labels)[1])
    for k, fold in enumerate(folds):
        save_tiny_model(fold_dir(out, k), labels, seed=k, splits=fold)
        mark_fold_finished(fold_dir(out, k), k, 2, {})
    result = evaluate_out_of_fold(
        out, data, tmp_path / "oof", EvaluationOptions(batch_size=4, search=True), device="cpu"
    )
    metrics, names = result.metrics, labels.foreground

    index = {row.image_id: row for row in index_layout(data, "train", labels)}
    probs, target, fold_of = [], [], []
    for k, fold in enumerate(folds):
        segmenter = load_segmenter(fold_dir(out, k), device="cpu")
        for batch in stream_predictions(segmenter, evaluation_loader(segmenter, [index[i] for i in fold["val"]], 5)):
            probs.append(batch.probs)
            target.append(batch.target)
            fold_of += [k] * len(batch.image_ids)
    probs, target, fold_of = torch.cat(probs), torch.cat(target), np.array(fold_of)
    assert probs.shape == (8, len(names), 64, 64)
    pooled = SegmentationMetrics(threshold=0.5, num_classes=len(names), class_names=names)
    pooled.update(probs, target)
    expected = pooled.compute()
    assert any(key.startswith("dice/") for key in expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key

    grid = search_grid(64, len(names))
    tuned, cross_validated = metrics["search"]["tuned_on_oof"], metrics["search"]["cross_validated"]
    for c, name in enumerate(names):
        best, _ = search_rule(probs[:, c], target[:, c], grid)
        assert result.best_postprocess.rules[c] == best, name
        per_image = []
        for k in range(2):
            others = fold_of != k
            rule, _ = search_rule(probs[others, c], target[others, c], grid)
            masks = rule.apply(probs[~others, c])
            per_image += [dice_score(m, t) for m, t in zip(masks, target[~others, c].numpy())]
        assert cross_validated["classes"][name]["kaggle_dice"] == pytest.approx(np.mean(per_image), abs=1e-12), name
    assert set(tuned["classes"]) == set(names)
    saved = json.loads((out / "postprocess.json").read_text())
    assert set(saved["classes"]) == set(names)  # per-class rules, saved as the ensemble's


def test_cli_evaluates_a_cv_folder_out_of_fold_and_as_an_ensemble(cv, demo_root, tmp_path, capsys):
    out, _ = cv
    assert main(["evaluate", "--model", str(out), "--data", str(demo_root), "--out", str(tmp_path / "oof")]) == 0
    printed = capsys.readouterr().out
    assert "Out of fold val: 24 images" in printed and "Per fold:" in printed
    # Another split is scored by the ensemble of the fold models.
    ensemble = tmp_path / "ensemble"
    code = main(["evaluate", "--model", str(out), "--data", str(demo_root), "--split", "train", "--out", str(ensemble)])
    assert code == 0
    assert json.loads((ensemble / "metrics.json").read_text())["model"] == str(out)
    # One fold under a given rule (the demo scores each fold under the CV folder's out-of-fold rule).
    rule = PostProcess(0.6, 2, 0.4, image_size=64)
    given = ["--postprocess", str(rule.save(tmp_path / "rule.json"))]
    code = main(["evaluate", "--model", str(fold_dir(out, 0)), "--data", str(demo_root), "--split", "train",
                 "--out", str(tmp_path / "fold0"), *given])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "fold0" / "metrics.json").read_text())["postprocess"] == rule.to_dict()
    assert main(["evaluate", "--model", str(out), "--data", str(demo_root), "--out", str(tmp_path / "x"), *given]) == 2
    assert "out-of-fold evaluation scores each fold's own images" in capsys.readouterr().err


def test_unfinished_folds_are_named(tmp_path, demo_root):
    out = tmp_path / "cv"
    untrained_cv_folder(demo_root, out, num_folds=2)
    (fold_dir(out, 1) / FOLD_RESULT_FILENAME).unlink()
    with pytest.raises(ModelLoadError, match=r"1 of 2 folds have not finished training \(.*fold_1\).*resume"):
        read_cross_validation(out)


class StopAt(TrainerCallback):
    """Raises KeyboardInterrupt right after the checkpoint of step ``step`` of the run in ``folder`` is saved."""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.step = folder, step

    def on_save(self, args, state, control, **kwargs):
        if Path(args.output_dir) == self.folder and state.global_step == self.step:
            raise KeyboardInterrupt


class RecordRuns(TrainerCallback):
    """Records, per training started, (output folder, global step it starts at, optimizer steps it takes)."""

    def __init__(self) -> None:
        self.runs: list[list] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.runs.append([Path(args.output_dir).name, state.global_step, 0])

    def on_step_end(self, args, state, control, **kwargs):
        self.runs[-1][2] += 1


@pytest.mark.slow
def test_a_cv_run_interrupted_in_its_second_fold_resumes_there(tmp_path, demo_root):
    out = tmp_path / "cv"
    args = recipe_args(
        demo_root, out, "--num_folds", "2", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
        "--balanced_sampling", "false", "--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--augmentation", "none",
    )  # fmt: skip
    first = RecordRuns()
    with pytest.raises(KeyboardInterrupt):
        train_folds(parse_recipe(args), callbacks=[first, StopAt(out / "fold_1", step=2)])
    assert first.runs == [["fold_0", 0, 3], ["fold_1", 0, 2]]  # 12 training images per fold, batches of 4
    assert (out / "fold_0" / FOLD_RESULT_FILENAME).exists() and not (out / "fold_1" / FOLD_RESULT_FILENAME).exists()
    finished_model = (out / "fold_0" / "model.safetensors").stat().st_mtime_ns

    again = RecordRuns()
    results = train_folds(parse_recipe([*args, "--resume_from_checkpoint", "last"]), callbacks=[again])
    assert again.runs == [["fold_1", 2, 1]]  # fold 0 skipped; fold 1 resumed from checkpoint-2 for its last step
    assert list(results) == [1] and (out / "fold_1" / FOLD_RESULT_FILENAME).exists()
    assert (out / "fold_0" / "model.safetensors").stat().st_mtime_ns == finished_model
    state = json.loads((out / "fold_1" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    folds = json.loads((out / "splits.json").read_text())
    for k in range(2):
        assert json.loads((out / f"fold_{k}" / "splits.json").read_text()) == folds[k]
    read_cross_validation(out)  # every fold finished: evaluate and predict can use the folder


@pytest.mark.slow
def test_all_folds_train_in_one_two_process_launch(tmp_path, demo_root):
    """``accelerate launch ... run_train.py --num_folds 2``: both folds train with world size 2 in one launched
    program (the process group outlives the first fold)."""
    out = tmp_path / "cv"
    cmd = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "accelerate_configs/cpu_ddp.yaml",
        "--main_process_port", str(free_port()), "run_train.py",
        *recipe_args(demo_root, out, "--num_folds", "2", "--num_train_epochs", "1", "--balanced_sampling", "false",
                     "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2")
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for k in range(2):
        assert (out / f"fold_{k}" / FOLD_RESULT_FILENAME).exists()
        state = json.loads((out / f"fold_{k}" / "trainer_state.json").read_text())
        assert state["global_step"] == 3  # 12 training images, 2 per process and step: two processes


def test_the_cv_demo_table_shows_the_numbers_of_its_evaluations(tmp_path, demo_root):
    """`make cv-demo`'s steps after training (averaging, evaluations), then its table (scripts/cv_demo_table.py):
    every row holds its metrics file's numbers, the legend says what the run recorded (cv.json, averaging.json), and
    without the averaged evaluations the table leaves those rows out and says so. The training images stand in for
    the held-out split."""
    out, averaged = tmp_path / "cv", tmp_path / "cv-averaged"
    untrained_cv_folder(demo_root, out, num_folds=2)
    recipe = parse_recipe(recipe_args(demo_root, out, "--num_folds", "2"))
    for k in range(2):  # three checkpoints per fold, as training with --save_total_limit 4 leaves them
        save_recipe(fold_recipe(recipe, k), fold_dir(out, k) / "recipe.yaml")
        for step in (2, 4, 6):
            save_tiny_model(fold_dir(out, k) / f"checkpoint-{step}", seed=10 * k + step)
            (fold_dir(out, k) / f"checkpoint-{step}" / "trainer_state.json").write_text(
                json.dumps({"global_step": step})
            )
    save_recipe(recipe, out / "recipe.yaml")
    # what the table reports comes from cv.json: here an inner split (the default is last)
    cv = json.loads((out / CV_FILENAME).read_text())
    inner = parse_recipe(recipe_args(demo_root, out, "--num_folds", "2", "--cv_checkpoint", "inner"))
    cv.update(cv_checkpoint="inner", checkpoint_chosen_on=checkpoint_chosen_on(inner))
    (out / CV_FILENAME).write_text(json.dumps(cv))
    data = ["--data", str(demo_root), "--num-workers", "0"]
    assert main(["average", "--model", str(out), "--last", "2", "--out", str(averaged), "--device", "cpu"]) == 0
    for model in (out, averaged):
        assert main(["evaluate", "--model", str(model), *data, "--search-postprocess"]) == 0
        assert main(["evaluate", "--model", str(model), *data, "--split", "train"]) == 0
        for k in range(2):
            rule = ["--postprocess", str(model / "postprocess.json")]
            assert main(["evaluate", "--model", str(fold_dir(model, k)), *data, "--split", "train", *rule]) == 0
    cv_demo_table = runpy.run_path(str(ROOT / "scripts" / "cv_demo_table.py"))["cv_demo_table"]
    table = cv_demo_table(out, "train", averaged)
    flat = " ".join(table.split())  # the legend, unwrapped

    def row(start: str, text: str = table) -> list[str]:
        return next(line for line in text.splitlines() if line.strip().startswith(start)).split()

    assert table.splitlines()[0].endswith(", scored at the original size 64x64 (= the working size)")

    def fmt(*values: float) -> list[str]:
        return [f"{value:.4f}" for value in values]

    for model, kind in ((out, "last checkpoint"), (averaged, "averaged last 2")):
        oof = json.loads((model / "evaluation" / "val" / "metrics.json").read_text())
        best = max(range(2), key=lambda k: oof["folds"][k]["kaggle_dice"])
        assert "(best on val.)" in " ".join(row(f"fold {best}, {kind}"))
        assert "(best on val.)" not in " ".join(row(f"fold {1 - best}, {kind}"))
        for k in range(2):
            alone = json.loads((fold_dir(model, k) / "evaluation" / "train" / "metrics.json").read_text())
            own = oof["folds"][k]
            expected = [own["dice"], own["kaggle_dice"], alone["dice"], alone["kaggle_dice"], alone["kaggle_dice_rule"]]
            assert row(f"fold {k}, {kind}")[-6:-1] == fmt(*expected)
        assert row(f"out of fold (24 images), {kind}")[-3:-1] == fmt(oof["dice"], oof["kaggle_dice"])
        ensemble = json.loads((model / "evaluation" / "train" / "metrics.json").read_text())
        expected = [ensemble["dice"], ensemble["kaggle_dice"], ensemble["kaggle_dice_rule"]]
        assert row(f"ensemble of the 2 folds, {kind}")[-4:-1] == fmt(*expected)
        column = [out, averaged].index(model) - 3  # the estimates' columns: last checkpoint, averaged; then the key
        search = oof["search"]
        assert row("threshold 0.5")[column] == fmt(oof["kaggle_dice"])[0]
        assert row("tuned on all out-of-fold")[column] == fmt(search["tuned_on_oof"]["kaggle_dice"])[0]
        assert row("cross-validated")[column] == fmt(search["cross_validated"]["kaggle_dice"])[0]
        rule = f"K. rule, {kind} rows: the train Kaggle Dice under {model}/postprocess.json, tuned on the out-of-fold"
        assert rule in flat
    assert row("fold 0, averaged last 2")[-6:-1] != row("fold 0, last checkpoint")[-6:-1]  # other weights
    assert "cv_checkpoint inner" in table.splitlines()[0]
    assert f"A fold k, last checkpoint: chosen on {checkpoint_chosen_on(inner)}." in flat
    averaging = json.loads((fold_dir(averaged, 1) / "averaging.json").read_text())
    assert averaging["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
    assert f"every fold: checkpoint-4, -6 (BatchNorm on {averaging['batchnorm_images']} images)" in flat

    shutil.rmtree(averaged / "fold_1" / "evaluation")  # a run from before the demo averaged: no averaged rows
    older = cv_demo_table(out, "train", averaged)
    assert "averaged" not in "\n".join(line for line in older.splitlines() if not line.startswith("Averaged"))
    assert older.splitlines()[-1].startswith(f"Averaged checkpoints: not in the table ({averaged}/fold_1/evaluation")
    assert row("fold 0, last checkpoint", older) == row("fold 0, last checkpoint")


def test_folds_choose_nothing_on_their_validation_images_by_default(tmp_path, demo_root):
    """cv_checkpoint: last (the default) turns load_best_model_at_end off in every fold; inner keeps it, carving
    the choosing split from the fold's training images (patients together) and holding the fold's images out; cv.json
    and the out-of-fold report say which."""
    out = tmp_path / "cv"
    recipe = parse_recipe(recipe_args(demo_root, out, "--num_folds", "2"))
    assert recipe.data.cv_checkpoint == "last" and recipe.training.load_best_model_at_end  # the recipe asks for it
    assert not fold_recipe(recipe, 0).training.load_best_model_at_end  # ... and the fold does not choose
    assert fold_recipe(recipe, 0).resolved["load_best_model_at_end"] is False  # its recipe.yaml retrains it so
    index = index_training_source(recipe.data, PNEUMOTHORAX)[1]
    folds = prepare_folds(recipe, PNEUMOTHORAX, index)
    assert fold_training_splits(recipe, PNEUMOTHORAX, index, folds) == folds
    assert json.loads((out / CV_FILENAME).read_text())["checkpoint_chosen_on"].startswith("nothing: each fold trains")

    inner = parse_recipe(recipe_args(demo_root, out, "--num_folds", "2", "--cv_checkpoint", "inner"))
    assert fold_recipe(inner, 1).training.load_best_model_at_end
    for fold, own in zip(folds, fold_training_splits(inner, PNEUMOTHORAX, index, folds)):
        assert own["held_out"] == fold["val"] and sorted(own["train"] + own["val"]) == fold["train"]
        assert not set(own["val"]) & set(own["train"]) and 0 < len(own["val"]) < len(own["train"])
    with pytest.raises(RecipeError, match="cv_checkpoint must be one of"):
        parse_recipe(recipe_args(demo_root, out, "--num_folds", "2", "--cv_checkpoint", "best"))

    # an inner-split CV folder evaluates out of fold on the held-out images, and its report says what chose
    inner_out = tmp_path / "cv-inner"
    inner = parse_recipe(recipe_args(demo_root, inner_out, "--num_folds", "2", "--cv_checkpoint", "inner"))
    folds = prepare_folds(inner, PNEUMOTHORAX, index)
    for k, own in enumerate(fold_training_splits(inner, PNEUMOTHORAX, index, folds)):
        save_tiny_model(fold_dir(inner_out, k), seed=k, splits=own)
        mark_fold_finished(fold_dir(inner_out, k), k, 2, {})
    result = evaluate_out_of_fold(inner_out, demo_root, tmp_path / "oof", device="cpu")
    assert (
        result.metrics["num_images"] == 24
        and "an inner split (0.2 of each fold's training images" in (result.metrics["checkpoint_chosen_on"])
    )
    assert "checkpoint chosen on: an inner split" in out_of_fold_summary(result)


@pytest.mark.slow
def test_validation_images_do_not_touch_the_fold_models(tmp_path, demo_root):
    """Two CV runs whose data differ only in the masks of fold 0's validation images (inverted): the per-epoch
    validation loss differs (a best-checkpoint rule would see other numbers), yet fold 0's model is the same tensor
    for tensor, and it is the fold's last checkpoint."""
    args = (
        "--num_folds", "2", "--fold", "0", "--num_train_epochs", "3", "--per_device_train_batch_size", "4",
        "--balanced_sampling", "false", "--augmentation", "none",
    )  # fmt: skip
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    train_folds(parse_recipe(recipe_args(demo_root, out_a, *args)))
    folds = json.loads((out_a / "splits.json").read_text())
    changed = tmp_path / "data"
    shutil.copytree(demo_root, changed)
    for image_id in folds[0]["val"]:
        mask = changed / "masks" / "train" / f"{image_id}.png"
        Image.fromarray(255 - np.asarray(Image.open(mask))).save(mask)  # every label of the image changes
    out_b.mkdir()
    shutil.copy(out_a / "splits.json", out_b / "splits.json")  # the same folds (the changed masks would move them)
    train_folds(parse_recipe(recipe_args(changed, out_b, *args)))

    def eval_losses(out):
        history = json.loads((out / "fold_0" / "trainer_state.json").read_text())["log_history"]
        return [entry["eval_loss"] for entry in history if "eval_loss" in entry]

    assert len(eval_losses(out_a)) == 3 and all(a != b for a, b in zip(eval_losses(out_a), eval_losses(out_b)))
    model_a = load_file(out_a / "fold_0" / "model.safetensors")
    model_b = load_file(out_b / "fold_0" / "model.safetensors")
    last = max((out_a / "fold_0").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for name, tensor in load_file(last / "model.safetensors").items():
        assert torch.equal(model_a[name], tensor) and torch.equal(model_b[name], tensor), name
    assert json.loads((out_a / CV_FILENAME).read_text())["cv_checkpoint"] == "last"


def test_the_cv_rule_knows_how_it_was_tuned_and_the_ensemble_tunes_its_own(tmp_path, demo_root, capsys):
    """The out-of-fold rule records its TTA and folds; the ensemble of those folds may use it with the same TTA and
    is refused it with another; --search-postprocess on the ensemble over another split tunes the ensemble's own."""
    out = tmp_path / "cv"
    untrained_cv_folder(demo_root, out, num_folds=2)
    data = ["--data", str(demo_root), "--num-workers", "0"]
    assert main(["evaluate", "--model", str(out), *data, "--search-postprocess"]) == 0
    printed = capsys.readouterr().out  # the report says what its numbers hold out
    assert "checkpoint chosen on: nothing" in printed and "estimate holds out the rule's choice only" in printed
    crossed = json.loads((out / "evaluation" / "val" / "metrics.json").read_text())["search"]["cross_validated"]
    assert "not nested" in crossed["holds_out"]
    provenance = json.loads((out / "postprocess.json").read_text())["provenance"]
    assert provenance["kind"] == "out_of_fold" and provenance["tta"] == "none"
    assert provenance["members"] == ["cv/fold_0", "cv/fold_1"] and provenance["image_size"] == 64
    assert provenance["checkpoint_chosen_on"].startswith("nothing: each fold trains")
    ensemble = ["evaluate", "--model", str(out), *data, "--split", "train"]
    assert main([*ensemble, "--out", str(tmp_path / "same")]) == 0
    capsys.readouterr()
    assert main([*ensemble, "--out", str(tmp_path / "hflip"), "--tta", "hflip"]) == 2
    assert "tuned with TTA none but these predictions use TTA hflip" in capsys.readouterr().err
    assert main([*ensemble, "--out", str(tmp_path / "tuned"), "--tta", "hflip", "--search-postprocess"]) == 0
    own = json.loads((out / "postprocess.json").read_text())["provenance"]
    assert own == {
        "tta": "hflip",
        "kind": "ensemble",
        "members": ["cv/fold_0", "cv/fold_1"],
        "image_size": 64,
        "score_size": "working",  # the demo images are stored at the working size
        "data": str(demo_root),
        "split": "train",
        "weights": None,
        "average": "probabilities",
    }
    assert main([*ensemble, "--out", str(tmp_path / "hflip"), "--tta", "hflip"]) == 0  # now it fits
    weighted = [*ensemble, "--out", str(tmp_path / "weighted"), "--tta", "hflip", "--ensemble-weights", "2", "1"]
    assert main(weighted) == 2  # ... but not to the same folds weighted otherwise
    assert "(weights, average) (None, 'probabilities') but this is ([2.0, 1.0], 'probabilities')" in (
        capsys.readouterr().err
    )
    one_fold = ["--model", str(fold_dir(out, 0)), "--out", str(tmp_path / "fold0"), "--tta", "hflip"]
    given = ["--postprocess", str(out / "postprocess.json")]
    assert main(["evaluate", *one_fold, *data, "--split", "train", *given]) == 2
    assert "tuned on the ensemble of" in capsys.readouterr().err
