"""The cross-validation demo's table (`make cv-demo`), from the metrics.json files its evaluations wrote:

    python scripts/cv_demo_table.py outputs/demo-cv --split test

Reads OUTPUT_DIR/evaluation/val/metrics.json (`cxrseg evaluate --model OUTPUT_DIR --search-postprocess`: out of
fold), OUTPUT_DIR/evaluation/SPLIT/metrics.json (the ensemble of the folds on the held-out split) and
OUTPUT_DIR/fold_<k>/evaluation/SPLIT/metrics.json (each fold alone on it, under the same out-of-fold rule). The
best single fold is the one with the best Kaggle mean Dice on its own validation images: chosen without the test
images, as the ensemble's rule is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrseg.evaluation.report import fmt


def read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing: run the evaluations of `make cv-demo` first")
    return json.loads(path.read_text())


def cv_demo_table(output_dir: Path, split: str) -> str:
    """Per-fold and out-of-fold Dice / Kaggle mean Dice, the post-processing estimates, and the ensemble against
    every fold on ``split`` (threshold 0.5, and under the rule tuned on all out-of-fold images)."""
    oof = read_metrics(output_dir / "evaluation" / "val" / "metrics.json")
    if "search" not in oof:
        raise SystemExit(f"error: {output_dir}/evaluation/val/metrics.json has no search: use --search-postprocess")
    ensemble = read_metrics(output_dir / "evaluation" / split / "metrics.json")
    folds = [
        read_metrics(output_dir / f"fold_{k}" / "evaluation" / split / "metrics.json") for k in range(len(oof["folds"]))
    ]
    best = max(range(len(folds)), key=lambda k: oof["folds"][k]["kaggle_dice"])

    def test_columns(m: dict) -> str:
        rule = m["kaggle_dice_rule"] if m["postprocess"] is not None else None
        return f"{fmt(m['dice']):>10}{fmt(m['kaggle_dice']):>10}{fmt(rule):>10}"

    header = f"{'':<30}{'validation':>20}{split + ' (' + str(int(ensemble['num_images'])) + ' images)':>30}"
    lines = [
        f"Cross-validation demo: {output_dir}, {len(folds)} folds, TTA {ensemble['tta']}",
        header,
        f"{'':<30}{'Dice':>10}{'Kaggle':>10}{'Dice':>10}{'Kaggle':>10}{'K. rule':>10}",
    ]
    for k, (own, alone) in enumerate(zip(oof["folds"], folds)):
        name = f"fold {k}" + (" (best on validation)" if k == best else "")
        lines.append(f"{name:<30}{fmt(own['dice']):>10}{fmt(own['kaggle_dice']):>10}{test_columns(alone)}")
    pooled = f"out of fold ({int(oof['num_images'])} images)"
    lines.append(f"{pooled:<30}{fmt(oof['dice']):>10}{fmt(oof['kaggle_dice']):>10}")
    lines.append(f"{'ensemble of the ' + str(len(folds)) + ' folds':<30}{'':>20}{test_columns(ensemble)}")
    search = oof["search"]
    lines += [
        "Post-processing, Kaggle mean Dice out of fold:",
        f"  {'threshold 0.5':<48}{fmt(oof['kaggle_dice'])}",
        f"  {'tuned on all out-of-fold images (optimistic)':<48}{fmt(search['tuned_on_oof']['kaggle_dice'])}",
        f"  {'cross-validated (tuned on the other folds)':<48}{fmt(search['cross_validated']['kaggle_dice'])}",
        f"K. rule: Kaggle mean Dice under {output_dir}/postprocess.json (tuned on all out-of-fold images).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the CV folder (run_train.py --num_folds output)")
    parser.add_argument("--split", default="test", help="the held-out split the ensemble was evaluated on")
    args = parser.parse_args()
    print(cv_demo_table(args.output_dir, args.split))
