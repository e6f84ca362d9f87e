"""What an evaluation reports: the result it returns, ``metrics.json`` (NaN as null), the search's table
(``postprocess_search.csv``) and the plain-text summaries ``cxrseg evaluate`` prints. Shared by the single-split
(:mod:`cxrseg.evaluation.evaluate`) and out-of-fold (:mod:`cxrseg.evaluation.out_of_fold`) drivers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrseg.evaluation.baselines import BASELINES
from cxrseg.evaluation.rule_search import TripletSearch
from cxrseg.files import AtomicCsv, atomic_write_text
from cxrseg.postprocessing.lookup import save_rule
from cxrseg.postprocessing.rules import MaskRule

SEARCH_COLUMNS = ("class", "top_threshold", "min_area", "bottom_threshold", "kaggle_dice", "dice")
"""The columns of ``postprocess_search.csv``."""


@dataclass
class EvaluationResult:
    """metrics: what ``metrics.json`` holds. search_table: the grid, best first (per class, in class order; empty
    without a search). best_postprocess / postprocess_path: the winner of a search and where it was saved."""

    metrics: dict
    out_dir: Path
    search_table: list[dict] = field(default_factory=list)
    best_postprocess: MaskRule | None = None
    postprocess_path: Path | None = None


def json_safe(value):
    """``value`` with NaN floats as None (JSON null), through nested dicts and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value) -> None:
    """Write ``value`` (:func:`json_safe`) as indented JSON atomically to ``path``."""
    atomic_write_text(path, json.dumps(json_safe(value), indent=2) + "\n")


def search_results(search: TripletSearch) -> dict:
    """What ``metrics.json`` says of a search: the winning ``postprocess`` (the saved file's content), its Kaggle
    mean Dice and dataset Dice (means over classes; per class under ``classes`` for several outputs) on the
    searched images, and the number of grid points."""
    names = search.class_names
    best = search.best()
    kaggle, dice = search.kaggle_dice(), search.dataset_dice()
    per_class = {
        name: {"kaggle_dice": float(kaggle[k][best[k]]), "dice": float(dice[k][best[k]])}
        for k, name in enumerate(names)
    }
    results = {
        "postprocess": search.compute().to_dict(),
        "kaggle_dice": float(np.mean([v["kaggle_dice"] for v in per_class.values()])),
        "dice": float(np.mean([v["dice"] for v in per_class.values()])),
        "grid_points": int(kaggle[0].size),
    }
    if len(names) > 1:
        results["classes"] = per_class
    return results


def search_table(search: TripletSearch) -> list[dict]:
    """Every class's grid (:meth:`TripletSearch.table`, best first) with a ``class`` key, classes in order."""
    return [{"class": name, **row} for k, name in enumerate(search.class_names) for row in search.table(k)]


def save_search(model_dir: Path, out: Path, best: MaskRule, table: list[dict]) -> Path:
    """Save the winner as ``model_dir/postprocess.json`` (:func:`cxrseg.postprocessing.lookup.save_rule`) and the
    table (:func:`search_table`) as ``out/postprocess_search.csv``; returns the winner's path."""
    saved_to = save_rule(best, model_dir)
    with AtomicCsv(out / "postprocess_search.csv", SEARCH_COLUMNS) as csv_file:
        for row in table:
            csv_file.writerow(
                (
                    row["class"],
                    row["top_threshold"],
                    row["min_area"],
                    row["bottom_threshold"],
                    f"{row['kaggle_dice']:.6f}",
                    f"{row['dice']:.6f}",
                )
            )
    return saved_to


def fmt(value) -> str:
    """A metric for a summary table: 4 decimals, ``n/a`` for None/NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _baselines(m: dict, key: str) -> str:
    """What the baselines (:mod:`cxrseg.evaluation.baselines`) score for metric ``key``, for a summary line."""
    shown = [f"{name.replace('_', ' ')} {fmt(m[f'{name}_{key}'])}" for name in BASELINES if f"{name}_{key}" in m]
    return f"   (baselines: {', '.join(shown)})" if shown else ""


def scored_at_words(m: dict) -> str:
    """Which size a ``metrics.json`` dict's scores are at, in words: "scored at the original size (1024x1024;
    working size 512x512)", "... original size 512x512 (= the working size)" or "scored at the working size
    512x512" (a dict without ``score_size``: the working size, where every score was before cxrseg offered
    another)."""
    working = f"{m['image_size']}x{m['image_size']}"
    sizes = m.get("scored_sizes") or [working]
    if m.get("score_size", "working") == "working":
        return f"scored at the working size {working}"
    if sizes == [working]:
        return f"scored at the original size {working} (= the working size)"
    shown = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more" if len(sizes) > 3 else "")
    return f"scored at the original size ({shown}; working size {working})"


def headline_lines(m: dict) -> list[str]:
    """The headline metrics of a ``metrics.json`` dict as summary-table lines, with the baselines beside Dice and
    Kaggle Dice, and a line per class for several classes. The first line says which size the scores are at
    (:func:`scored_at_words`)."""
    positives = f" ({int(m['num_positive_images'])} positive)" if "num_positive_images" in m else ""
    lines = [
        f"{m['split']}: {int(m['num_images'])} images{positives}, {scored_at_words(m)}, TTA {m['tta']}",
        f"  {'Dice (pixels)':<28}{fmt(m['dice'])}{_baselines(m, 'dice')}",
        f"  {'IoU (pixels)':<28}{fmt(m['iou'])}",
        f"  {'Kaggle mean Dice':<28}{fmt(m['kaggle_dice'])}{_baselines(m, 'kaggle_dice')}",
        f"  {'AP (pixels)':<28}{fmt(m['ap'])}",
    ]
    classes = [key.split("/", 1)[1] for key in m if key.startswith("dice/")]
    if classes:
        prior = "prior_mask_dice" in m
        header = f"  {'class':<22}{'Dice':>10}" + (f"{'prior':>10}" if prior else "") + f"{'Kaggle':>10}"
        lines.append(header + (f"{'prior':>10}" if prior else "") + f"{'AP':>10}")
        for name in classes:
            row = f"  {name[:21]:<22}{fmt(m[f'dice/{name}']):>10}"
            row += f"{fmt(m.get(f'prior_mask_dice/{name}')):>10}" if prior else ""
            row += f"{fmt(m.get(f'kaggle_dice/{name}')):>10}"
            row += f"{fmt(m.get(f'prior_mask_kaggle_dice/{name}')):>10}" if prior else ""
            lines.append(row + f"{fmt(m.get(f'ap/{name}')):>10}")
    if "best_f1" in m:
        lines.append(f"  {'best F1 (at p >= t)':<28}{fmt(m['best_f1'])} (t = {fmt(m['best_threshold'])})")
    if m["postprocess"] is not None:
        lines.append(f"  {'Kaggle Dice, postprocess':<28}{fmt(m['kaggle_dice_rule'])}")
        lines.append(f"  {'Dice, postprocess':<28}{fmt(m['dice_rule'])}")
    return lines


def describe_rule(rule: dict) -> str:
    """A postprocess.json dict in words: one triplet, or ``per class`` for several."""
    if "classes" in rule:
        return f"per class ({len(rule['classes'])} triplets)"
    return f"top {rule['top_threshold']}, area {rule['min_area']}, bottom {rule['bottom_threshold']}"


def class_search_lines(m: dict, search: dict) -> list[str]:
    """Per class: Dice and Kaggle Dice at 0.5 against the tuned triplet's (multi-output searches)."""
    lines = [f"  {'class':<22}{'Dice 0.5':>10}{'tuned':>10}{'Kaggle 0.5':>12}{'tuned':>10}   triplet"]
    for name, tuned in search["classes"].items():
        rule = search["postprocess"]["classes"][name]
        lines.append(
            f"  {name[:21]:<22}{fmt(m[f'dice/{name}']):>10}{fmt(tuned['dice']):>10}"
            f"{fmt(m[f'kaggle_dice/{name}']):>12}{fmt(tuned['kaggle_dice']):>10}   {describe_rule(rule)}"
        )
    return lines


def summary_table(evaluation: EvaluationResult) -> str:
    """A short plain-text table of the headline metrics, and the before/after table of a search."""
    m = evaluation.metrics
    lines = headline_lines(m)
    if "search" in m:
        search = m["search"]
        lines += [
            "Post-processing search (Kaggle mean Dice on this split; the winner is tuned on it, so it is optimistic):",
            f"  {'threshold 0.5':<44}{fmt(m['kaggle_dice'])}",
        ]
        if m["postprocess"] is not None:
            lines.append(
                f"  {'previous postprocess.json':<44}{fmt(m['kaggle_dice_rule'])}   ({describe_rule(m['postprocess'])})"
            )
        lines.append(f"  {'best: ' + describe_rule(search['postprocess']):<44}{fmt(search['kaggle_dice'])}")
        if "classes" in search:
            lines += class_search_lines(m, search)
        lines.append(f"  saved to {evaluation.postprocess_path}")
    return "\n".join(lines)


def out_of_fold_summary(evaluation: EvaluationResult) -> str:
    """The OOF headline metrics, the per-fold figures, and with a search the before / tuned-on-OOF /
    cross-validated Kaggle mean Dice (per class for several outputs)."""
    m = evaluation.metrics
    lines = [
        "Out of fold " + headline_lines(m)[0],
        f"  each fold's checkpoint chosen on: {m.get('checkpoint_chosen_on', 'not recorded')}",
        *headline_lines(m)[1:],
        "Per fold:",
    ]
    lines.append(f"  {'fold':<6}{'images':>8}{'Dice':>10}{'Kaggle':>10}{'AP':>10}")
    for fold in m["folds"]:
        lines.append(
            f"  {fold['fold']:<6}{int(fold['num_images']):>8}{fmt(fold['dice']):>10}{fmt(fold['kaggle_dice']):>10}"
            f"{fmt(fold['ap']):>10}"
        )
    spread = m["fold_spread"]
    lines.append(
        "  mean ± std " + ", ".join(f"{key} {fmt(spread[key]['mean'])} ± {fmt(spread[key]['std'])}" for key in spread)
    )
    if "search" in m:
        tuned, crossed = m["search"]["tuned_on_oof"], m["search"]["cross_validated"]
        lines += [
            "Post-processing (Kaggle mean Dice / dataset Dice, out of fold):",
            f"  {'threshold 0.5':<52}{fmt(m['kaggle_dice'])} / {fmt(m['dice'])}",
            f"  {'tuned on all OOF images (optimistic)':<52}{fmt(tuned['kaggle_dice'])} / {fmt(tuned['dice'])}",
            f"  {'cross-validated (tuned on the other folds)':<52}{fmt(crossed['kaggle_dice'])} / "
            f"{fmt(crossed['dice'])}",
        ]
        if "classes" in tuned:
            lines.append(f"  {'class':<22}{'Dice 0.5':>10}{'tuned':>10}{'CV':>10}")
            for name, values in tuned["classes"].items():
                lines.append(
                    f"  {name[:21]:<22}{fmt(m[f'dice/{name}']):>10}{fmt(values['dice']):>10}"
                    f"{fmt(crossed['classes'][name]['dice']):>10}"
                )
        if "holds_out" in crossed:
            lines.append(f"  the cross-validated estimate holds out {crossed['holds_out']}")
        lines.append(f"  saved (tuned on all OOF images) to {evaluation.postprocess_path}")
    return "\n".join(lines)
