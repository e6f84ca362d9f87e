"""A mask rule knows how it was tuned: its provenance survives saving and loading (and rescaling), is ignored by
equality, and a rule applied to predictions made otherwise (other TTA, one model vs an ensemble, other members) is
refused, or warned about on request; an old file without provenance still loads, with a warning."""

from __future__ import annotations

import json
import logging

import pytest

from cxrseg.errors import ModelLoadError
from cxrseg.postprocessing.lookup import check_rule, member_name
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess, load_postprocess

FOLDS = ["cv/fold_0", "cv/fold_1", "cv/fold_2"]


def tuned(kind: str, members: list[str], tta: str = "none") -> PostProcess:
    provenance = {"tta": tta, "kind": kind, "members": members, "image_size": 64, "data": "d", "split": "val"}
    return PostProcess(0.7, 10, 0.4, image_size=64, provenance=provenance)


def made(kind: str, members: list[str], tta: str = "none") -> dict:
    return {"tta": tta, "kind": kind, "members": members, "image_size": 64}


def test_provenance_is_saved_loaded_and_kept_when_rescaled(tmp_path):
    rule = tuned("out_of_fold", FOLDS, "hflip")
    loaded = load_postprocess(rule.save(tmp_path / "postprocess.json"))
    assert loaded == rule and loaded.provenance == rule.provenance
    assert loaded.scaled(128).provenance == rule.provenance and loaded.scaled(128).min_area == 40
    assert rule == PostProcess(0.7, 10, 0.4, image_size=64)  # the rule's identity is its triplet and size
    per_class = ClassPostProcess(("a", "b"), (PostProcess(image_size=8),) * 2, rule.provenance)
    again = load_postprocess(per_class.save(tmp_path / "classes.json"))
    assert again.provenance == rule.provenance and again.scaled(16).provenance == rule.provenance
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"top_threshold": 0.7, "min_area": 10, "bottom_threshold": 0.4, "image_size": 64}))
    assert load_postprocess(old).provenance is None and "provenance" not in load_postprocess(old).to_dict()


@pytest.mark.parametrize(
    ("rule", "predictions"),
    [
        (tuned("single", ["runs/a"]), made("single", ["runs/a"])),
        (tuned("out_of_fold", FOLDS), made("ensemble", list(reversed(FOLDS)))),  # the winners' practice
        (tuned("out_of_fold", FOLDS), made("single", ["cv/fold_1"])),  # one fold under the CV rule
        (tuned("ensemble", ["runs/a", "runs/b"], "hflip"), made("ensemble", ["runs/b", "runs/a"], "hflip")),
    ],
)
def test_a_rule_fits_predictions_made_like_those_it_was_tuned_on(rule, predictions):
    check_rule(rule, predictions, "model")


@pytest.mark.parametrize(
    ("rule", "predictions", "why"),
    [
        (tuned("single", ["runs/a"]), made("single", ["runs/a"], "hflip"), "tuned with TTA none but these"),
        (tuned("out_of_fold", FOLDS, "hflip"), made("ensemble", FOLDS), "tuned with TTA hflip but these"),
        (tuned("single", ["runs/a"]), made("ensemble", ["runs/a", "runs/b"]), "these predictions are an ensemble"),
        (tuned("ensemble", ["runs/a", "runs/b"]), made("single", ["runs/a"]), "but model is one model"),
        (tuned("ensemble", ["runs/a", "runs/b"]), made("ensemble", ["runs/a", "runs/c"]), "this ensemble is"),
        (tuned("out_of_fold", FOLDS), made("ensemble", FOLDS[:2]), "this ensemble is"),
        (tuned("out_of_fold", FOLDS), made("single", ["runs/a"]), "model is none of them"),
        (
            tuned("ensemble", ["runs/a", "runs/b"]),
            {**made("ensemble", ["runs/a", "runs/b"]), "average": "logits"},
            r"\(weights, average\) \(None, 'probabilities'\) but this is \(None, 'logits'\)",
        ),
    ],
)
def test_a_rule_applied_to_predictions_made_otherwise_is_refused(rule, predictions, why, caplog):
    with pytest.raises(ModelLoadError, match=f"mask rule of model does not fit these predictions: .*{why}"):
        check_rule(rule, predictions, "model")
    with caplog.at_level(logging.WARNING, logger="cxrseg.postprocessing.lookup"):
        check_rule(rule, predictions, "model", mismatch="warn")
    assert "--allow-rule-mismatch" in caplog.text


def test_a_rule_without_provenance_is_applied_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cxrseg.postprocessing.lookup"):
        check_rule(PostProcess(image_size=64), made("ensemble", FOLDS, "hflip"), "old-model")
    assert "old-model records no provenance" in caplog.text


def test_member_names_survive_a_moved_folder():
    assert member_name("/a/b/outputs/demo-cv/fold_0") == member_name("elsewhere/demo-cv/fold_0") == "demo-cv/fold_0"
