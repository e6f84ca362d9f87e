"""The cross-validation demo's table (`make cv-demo`), from the files its steps wrote:

    python scripts/cv_demo_table.py outputs/demo-cv --averaged outputs/demo-cv-averaged --split test

For the CV folder OUTPUT_DIR and its averaged copy AVERAGED (`cxrseg average --model OUTPUT_DIR --out AVERAGED`)
alike, it reads MODEL/evaluation/val/metrics.json (`cxrseg evaluate --model MODEL --search-postprocess`: out of
fold, and the rule tuned on it), MODEL/evaluation/SPLIT/metrics.json (the ensemble of the folds on the held-out
split) and MODEL/fold_<k>/evaluation/SPLIT/metrics.json (each fold alone on it, under MODEL's out-of-fold rule), and
says under the table what every number was chosen on and measured on, from what the run recorded (cv.json,
averaging.json, the rules' provenance). Without AVERAGED's evaluations (a run from before `make cv-demo` averaged)
the table leaves its rows out and says so.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from cxrseg.constants import AVERAGING_FILENAME, CV_FILENAME, ENSEMBLE_FILENAME
from cxrseg.evaluation.report import fmt, scored_at_words
from cxrseg.inference.cv_folder import UNRECORDED_CHECKPOINT

NAME_WIDTH = 46


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing: run the steps of `make cv-demo` first")
    return json.loads(path.read_text())


@dataclass
class Evaluated:
    """One CV folder's evaluations: oof (out of fold, with its search), ensemble and folds (on the held-out split)."""

    root: Path
    oof: dict
    ensemble: dict
    folds: list[dict]

    @property
    def best(self) -> int:
        """The fold with the best Kaggle mean Dice on its own validation images (the test split chooses nothing)."""
        return max(range(len(self.folds)), key=lambda k: self.oof["folds"][k]["kaggle_dice"])


def read_evaluated(root: Path, split: str) -> Evaluated:
    oof = read_json(root / "evaluation" / "val" / "metrics.json")
    if "search" not in oof:
        raise SystemExit(f"error: {root}/evaluation/val/metrics.json has no search: use --search-postprocess")
    ensemble = read_json(root / "evaluation" / split / "metrics.json")
    folds = [read_json(root / f"fold_{k}" / "evaluation" / split / "metrics.json") for k in range(len(oof["folds"]))]
    return Evaluated(root, oof, ensemble, folds)


def missing_evaluations(root: Path, split: str) -> Path | None:
    """The first file of :func:`read_evaluated` that ``root`` lacks (None when it has them all)."""
    oof = root / "evaluation" / "val" / "metrics.json"
    if not oof.is_file():
        return oof
    num_folds = len(json.loads(oof.read_text())["folds"])
    wanted = [root / "evaluation" / split, *(root / f"fold_{k}" / "evaluation" / split for k in range(num_folds))]
    return next((path / "metrics.json" for path in wanted if not (path / "metrics.json").is_file()), None)


def rule_tuned_on(metrics: dict, split: str) -> str:
    """In words, what the rule of a held-out evaluation (its ``postprocess``) was tuned on, from its provenance."""
    rule = metrics["postprocess"]
    if rule is None:
        return "no rule"
    provenance = rule.get("provenance") or {}
    if provenance.get("kind") == "out_of_fold":
        return f"the out-of-fold predictions of the {len(provenance['members'])} folds on {provenance['data']}"
    if not provenance:
        return "unrecorded images (the rule has no provenance)"
    tuned = f"{provenance.get('kind')} predictions on {provenance.get('data')}, split {provenance.get('split')}"
    return tuned + (" (the images it is measured on: not held out)" if provenance.get("split") == split else "")


def averaged_checkpoints(root: Path, num_folds: int) -> str:
    """Which checkpoints each averaged fold holds (their averaging.json), e.g. "fold 0: checkpoint-4, -8, -12 (BatchNorm
    on 260 images)", said once when every fold has the same."""
    parts = []
    for k in range(num_folds):
        summary = read_json(root / f"fold_{k}" / AVERAGING_FILENAME)
        names = summary["checkpoints"]
        steps = ", ".join([names[0], *(f"-{name.rsplit('-', 1)[1]}" for name in names[1:])])
        parts.append(f"{steps} (BatchNorm on {summary['batchnorm_images']} images)")
    if len(set(parts)) == 1:
        return f"every fold: {parts[0]}"
    return "; ".join(f"fold {k}: {part}" for k, part in enumerate(parts))


def ensemble_mixing(root: Path) -> str:
    """How the CV folder ``root``'s ensemble mixes its folds, in words."""
    if (root / ENSEMBLE_FILENAME).is_file():
        return f"the folds mixed as {root}/{ENSEMBLE_FILENAME} says"
    return "the mean of the folds' probabilities"


def legend(key: str, text: str) -> str:
    """One legend entry, wrapped: ``key`` (a row's "see" column; empty for a column or a mark) then ``text``."""
    indents = {"initial_indent": f"  {key:<3}" if key else "  ", "subsequent_indent": " " * 5}
    return textwrap.fill(text, width=118, break_long_words=False, break_on_hyphens=False, **indents)


def cv_demo_table(output_dir: Path, split: str, averaged: Path | None = None) -> str:
    """Per fold (last checkpoint, and averaged when ``averaged`` holds its evaluations) Dice and Kaggle mean Dice on
    its validation images and on ``split`` (threshold 0.5, and under the out-of-fold rule), out of fold, the
    ensembles, the post-processing estimates, then what each number was chosen on and measured on."""
    plain = read_evaluated(output_dir, split)
    note = "Averaged checkpoints: not in the table (no --averaged folder given)." if averaged is None else None
    if averaged is not None and (missing := missing_evaluations(averaged, split)) is not None:
        note = (
            f"Averaged checkpoints: not in the table ({missing} is missing: run the averaging steps of make cv-demo)."
        )
        averaged = None
    models = [("last checkpoint", plain)]
    if averaged is not None:
        average = read_evaluated(averaged, split)
        k_last = len(read_json(averaged / "fold_0" / AVERAGING_FILENAME)["checkpoints"])
        models.append((f"averaged last {k_last}", average))
    num_folds = len(plain.folds)
    cv = read_json(output_dir / CV_FILENAME)
    test_images = int(plain.ensemble["num_images"])
    tta = sorted({m["tta"] for _, model in models for m in (model.oof, model.ensemble, *model.folds)})

    def test_columns(m: dict) -> str:
        rule = m["kaggle_dice_rule"] if m["postprocess"] is not None else None
        return f"{fmt(m['dice']):>10}{fmt(m['kaggle_dice']):>10}{fmt(rule):>10}"

    def line(name: str, validation: str, test: str, key: str) -> str:
        return f"{name:<{NAME_WIDTH}}{validation:>20}{test:>30}  {key}"

    lines = [
        f"Cross-validation demo: {output_dir}, {num_folds} folds, TTA {' and '.join(tta)}, "
        f"cv_checkpoint {cv.get('cv_checkpoint', 'not recorded')}, {scored_at_words(plain.oof)}",
        f"{'':<{NAME_WIDTH}}{'validation':>20}{split + ' (' + str(test_images) + ' images)':>30}",
        line("", f"{'Dice':>10}{'Kaggle':>10}", f"{'Dice':>10}{'Kaggle':>10}{'K. rule':>10}", "see"),
    ]
    for k in range(num_folds):
        for (kind, model), key in zip(models, "AB"):
            own = model.oof["folds"][k]
            name = f"fold {k}, {kind}" + (" (best on val.)" if k == model.best else "")
            validation = f"{fmt(own['dice']):>10}{fmt(own['kaggle_dice']):>10}"
            lines.append(line(name, validation, test_columns(model.folds[k]), key))
    for kind, model in models:
        name = f"out of fold ({int(model.oof['num_images'])} images), {kind}"
        lines.append(line(name, f"{fmt(model.oof['dice']):>10}{fmt(model.oof['kaggle_dice']):>10}", "", "C"))
    for kind, model in models:
        lines.append(line(f"ensemble of the {num_folds} folds, {kind}", "", test_columns(model.ensemble), "D"))
    lines.append(f"Post-processing, Kaggle mean Dice out of fold:{''.join(f'{kind:>20}' for kind, _ in models)}")
    estimates = [
        ("threshold 0.5", lambda m: m.oof["kaggle_dice"], "C"),
        ("tuned on all out-of-fold images (optimistic)", lambda m: m.oof["search"]["tuned_on_oof"]["kaggle_dice"], "E"),
        (
            "cross-validated (tuned on the other folds)",
            lambda m: m.oof["search"]["cross_validated"]["kaggle_dice"],
            "F",
        ),
    ]
    for name, value, key in estimates:
        lines.append(f"  {name:<44}{''.join(f'{fmt(value(model)):>20}' for _, model in models)}  {key}")

    held_out = f"{split}: the {test_images} {split} images"
    chosen_on = plain.oof.get("checkpoint_chosen_on", UNRECORDED_CHECKPOINT)  # older evaluations lack it
    entries = [
        (
            "A",
            f"fold k, last checkpoint: chosen on {chosen_on}. Validation: fold k's "
            f"validation images, which it never trained on (out of fold). {held_out}.",
        ),
    ]
    if averaged is not None:
        entries.append(
            (
                "B",
                f"fold k, {models[1][0]}: the mean of its newest {k_last} checkpoints, a fixed K (no choice on any "
                f"image; {averaged_checkpoints(averaged, num_folds)}), BatchNorm re-estimated on fold k's training "
                "images as training drew them (sampler, augmentation). Measured as A.",
            )
        )
    entries += [
        (
            "",
            f"best on val.: the fold with the best Kaggle Dice on its own validation images, chosen without the "
            f"{split} images (its {split} columns are held out from that choice).",
        ),
        (
            "C",
            "out of fold: every training image, each by the one fold model that never trained on it; threshold "
            "0.5, nothing chosen on them.",
        ),
    ]
    for kind, model in models:
        mixing = ensemble_mixing(model.root)
        entries.append(("D", f"ensemble, {kind}: {mixing}; nothing chosen; measured on the {split} images."))
    for kind, model in models:
        rule = f"{model.root}/postprocess.json, tuned on {rule_tuned_on(model.ensemble, split)}"
        entries.append(("", f"K. rule, {kind} rows: the {split} Kaggle Dice under {rule}."))
    entries += [
        ("E", "the rule tuned on all out-of-fold images and scored on the same images: optimistic."),
        (
            "F",
            "each fold's images scored by the rule tuned on the other folds' out-of-fold predictions (those "
            "models trained on fold k's images: not nested, slightly optimistic).",
        ),
    ]
    lines.append("Chosen on / measured on (from cv.json, averaging.json and the rules' provenance):")
    lines += [legend(key, text) for key, text in entries]
    if note:
        lines.append(note)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the CV folder (run_train.py --num_folds output)")
    parser.add_argument(
        "--averaged", type=Path, help="its averaged copy (cxrseg average --out); rows left out when absent"
    )
    parser.add_argument("--split", default="test", help="the held-out split the models were evaluated on")
    args = parser.parse_args()
    print(cv_demo_table(args.output_dir, args.split, args.averaged))
