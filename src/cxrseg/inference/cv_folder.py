"""A cross-validation folder as a model source: its layout, whether a folder is one, and reading it.

The folder (written by :mod:`cxrseg.training.cross_validation`)::

    OUTPUT_DIR/
      cv.json             the marker: {"num_folds": K, "folds": ["fold_0", ...], "split_seed", "strata", "groups"}
      splits.json         the K folds, nnU-Net style: [{"train": [ids], "val": [ids]}, ...] (cxrseg.data.splits)
      recipe.yaml         the resolved recipe (with num_folds)
      fold_<k>/           a normal training output folder whose splits.json is fold k's {"train", "val"} (or an inner
                          split of fold k's training images plus "held_out": fold k's val);
                          cv_fold.json appears when fold k has finished
      evaluation/val/     out-of-fold evaluation (``cxrseg evaluate --model OUTPUT_DIR``)
      postprocess.json    the mask rule tuned on the out-of-fold predictions: the ensemble's rule
      evaluation/<split>/ the ensemble of the K fold models on another split
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cxrseg.constants import CV_FILENAME, FOLD_RESULT_FILENAME, SPLITS_FILENAME
from cxrseg.data.splits import Split
from cxrseg.errors import ModelLoadError


def fold_dir(output_dir: str | os.PathLike, fold: int) -> Path:
    """``OUTPUT_DIR/fold_<fold>``."""
    return Path(output_dir) / f"fold_{fold}"


def is_cv_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a CV folder (holds ``cv.json``)."""
    return (Path(path) / CV_FILENAME).is_file()


def fold_is_finished(folder: str | os.PathLike) -> bool:
    """Whether the fold trained in ``folder`` ran to the end (its ``cv_fold.json`` exists)."""
    return (Path(folder) / FOLD_RESULT_FILENAME).is_file()


UNRECORDED_CHECKPOINT = (
    "not recorded in cv.json (trained before cxrseg recorded it: unless the recipe turned load_best_model_at_end "
    "off, each fold kept its best checkpoint on its own validation images, so the out-of-fold figures are optimistic)"
)


@dataclass(frozen=True)
class CrossValidationRun:
    """A trained CV folder. folds: the K splits of ``splits.json``; fold_dirs: their model folders."""

    root: Path
    folds: list[Split]
    fold_dirs: list[Path]
    checkpoint_chosen_on: str = UNRECORDED_CHECKPOINT
    """cv.json's ``checkpoint_chosen_on``: what each fold's kept checkpoint was chosen on."""

    @property
    def num_folds(self) -> int:
        return len(self.folds)


def read_cross_validation(path: str | os.PathLike) -> CrossValidationRun:
    """Read the CV folder ``path`` (module docstring); every fold must be finished. Raises
    :class:`~cxrseg.errors.ModelLoadError` naming the folder and what to do."""
    root = Path(path)
    try:
        summary = json.loads((root / CV_FILENAME).read_text())
        folds = json.loads((root / SPLITS_FILENAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{root} is not a readable CV folder: {error}") from error
    if not isinstance(folds, list) or len(folds) != summary.get("num_folds"):
        raise ModelLoadError(f"{root}/splits.json does not hold the {summary.get('num_folds')} folds of {CV_FILENAME}.")
    fold_dirs = [root / name for name in summary["folds"]]
    unfinished = [str(folder) for folder in fold_dirs if not fold_is_finished(folder)]
    if unfinished:
        raise ModelLoadError(
            f"{root}: {len(unfinished)} of {len(fold_dirs)} folds have not finished training "
            f"({', '.join(unfinished)}); rerun the training command with --resume_from_checkpoint last."
        )
    return CrossValidationRun(root, folds, fold_dirs, summary.get("checkpoint_chosen_on", UNRECORDED_CHECKPOINT))
