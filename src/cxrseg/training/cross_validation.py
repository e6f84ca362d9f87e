"""K-fold cross-validation: the on-disk contract, and the pieces training, evaluation and ensembles share.

A recipe with ``num_folds: K`` makes ``output_dir`` a **CV folder**::

    OUTPUT_DIR/
      cv.json             the marker: {"num_folds": K, "folds": ["fold_0", ...], "split_seed", "strata", "groups",
                          "cv_checkpoint", "checkpoint_chosen_on"}
      splits.json         the K folds, nnU-Net style: [{"train": [ids], "val": [ids]}, ...] (cxrseg.data.splits)
      recipe.yaml         the resolved recipe (with num_folds)
      fold_<k>/           a normal training output folder (model, processor, recipe.yaml, checkpoint-N/, metrics,
                          model card) whose splits.json is fold k's {"train", "val"} (with ``cv_checkpoint: inner``:
                          {"train": inner train, "val": inner split, "held_out": fold k's val}) and whose recipe.yaml
                          retrains fold k as a plain run; cv_fold.json appears when fold k has finished
      evaluation/val/     out-of-fold evaluation (``cxrseg evaluate --model OUTPUT_DIR``; cxrseg.evaluation.out_of_fold)
      postprocess.json    post-processing tuned on the out-of-fold predictions: the ensemble's mask rule
      ensemble.json       optional, the user's: the folds' ensemble weights and average (cxrseg.inference.ensemble)
      evaluation/<split>/ the ensemble of the K fold models on another split (cxrseg.inference.ensemble)

Folds are made once (seeded; each class's count as level between folds as the patient groups allow, which is
positivity for pneumothorax, :func:`cxrseg.data.splits.make_folds`; grouped by patient, :mod:`cxrseg.data.groups`)
and reused: a rerun, or a run of one fold (``fold: k``) on another machine, reads the same ``splits.json``.
``cv.json`` and ``splits.json`` are functions of the data and the recipe, so folds
trained in parallel may write them at the same time. A fold is finished when its ``cv_fold.json`` exists (written
last, atomically); resuming (``resume_from_checkpoint: last``) skips finished folds and resumes the first unfinished
one from its last checkpoint.

No choice is made on the images the out-of-fold figures score: by default (``cv_checkpoint: last``) each fold trains
its fixed schedule and keeps its last checkpoint (``load_best_model_at_end`` off: the SIIM-ACR winners' practice);
with ``cv_checkpoint: inner`` it keeps the best checkpoint on an inner split carved from its own training images.
``cv.json`` records which (``checkpoint_chosen_on``), and the out-of-fold report repeats it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

from cxrseg.config import Recipe
from cxrseg.constants import CV_FILENAME, FOLD_RESULT_FILENAME, SPLITS_FILENAME
from cxrseg.data.dataset import class_presence, is_saved_dataset
from cxrseg.data.groups import patient_groups
from cxrseg.data.png_layout import IndexedImage
from cxrseg.data.splits import Split, load_or_make_folds, make_folds, read_splits, save_split
from cxrseg.errors import DataError
from cxrseg.files import TRAINING_RUN, atomic_write_text, mark_output
from cxrseg.inference.cv_folder import fold_dir
from cxrseg.labels import LabelSet

logger = logging.getLogger(__name__)


def prepare_folds(recipe: Recipe, labels: LabelSet, index: list[IndexedImage], write: bool = True) -> list[Split]:
    """Load or make the folds of the recipe's data (``index``: :func:`~cxrseg.data.dataset.index_training_source`'s)
    in ``OUTPUT_DIR/splits.json``, and write ``cv.json``; ``write=False`` only checks and makes them (the same folds:
    they are seeded), for the checks before a run's first write.

    Balanced per class (:func:`~cxrseg.data.splits.make_folds`); groups the patients
    (:func:`cxrseg.data.groups.patient_groups` of the data folder). Under DDP every process calls it, the main one
    first (``main_process_first``): the others read the folds it saved.
    """
    data_args, output_dir = recipe.data, Path(recipe.training.output_dir)
    image_ids = [row.image_id for row in index]
    root = Path(data_args.data_dir)
    groups, described = patient_groups(root.parent if is_saved_dataset(root) else root, image_ids)
    if not any(group.startswith("patient:") for group in groups):
        chestxdet = " (ChestX-Det's file names carry no patient id)" if labels.task == "chestxdet" else ""
        logger.warning(
            "No patient ids for %s%s: folds are made per image, so one patient's images may fall in different "
            "folds. Give them as a PatientID column of metadata.csv (cxrseg prepare ... --patient-ids).",
            root,
            chestxdet,
        )
    folds = load_or_make_folds(
        output_dir / SPLITS_FILENAME,
        image_ids,
        [class_presence(row, labels) for row in index],
        groups,
        data_args.num_folds,
        data_args.split_seed,
        save=write and recipe.training.should_save,
    )
    summary = {
        "num_folds": data_args.num_folds,
        "folds": [fold_dir(".", k).name for k in range(data_args.num_folds)],
        "split_seed": data_args.split_seed,
        "strata": "positives per fold" if len(labels.foreground) == 1 else "images per class per fold",
        "groups": described,
        "num_images": len(image_ids),
        "cv_checkpoint": data_args.cv_checkpoint,
        "checkpoint_chosen_on": checkpoint_chosen_on(recipe),
    }
    if write and recipe.training.should_save:  # the data and the folds are checked (train_folds checked the folder)
        mark_output(output_dir, TRAINING_RUN)
        atomic_write_text(output_dir / CV_FILENAME, json.dumps(summary, indent=2) + "\n")
    logger.info("%d folds of %d images (%s) in %s.", data_args.num_folds, len(image_ids), described, output_dir)
    return folds


def checkpoint_chosen_on(recipe: Recipe) -> str:
    """In words, what a fold's kept checkpoint was chosen on under the recipe's ``cv_checkpoint``."""
    if recipe.data.cv_checkpoint == "last":
        return (
            f"nothing: each fold trains {recipe.training.num_train_epochs:g} epochs and keeps its last checkpoint; "
            "the fold's validation images choose nothing"
        )
    best = recipe.training.load_best_model_at_end
    return (
        f"an inner split ({recipe.data.val_fraction:g} of each fold's training images, patients kept together), by "
        f"{recipe.training.metric_for_best_model if best else 'nothing (load_best_model_at_end is off: last)'}; "
        "the fold's validation images are neither trained on nor used to choose"
    )


def fold_training_splits(
    recipe: Recipe, labels: LabelSet, index: list[IndexedImage], folds: list[Split]
) -> list[Split]:
    """What each fold's training run reads as its ``splits.json``. ``cv_checkpoint: last``: the fold itself.
    ``inner``: ``{"train", "val"}`` carved from the fold's training images (the validation part is fold 0 of
    :func:`~cxrseg.data.splits.make_folds` with ``round(1 / val_fraction)`` folds, so balanced and patient-grouped,
    seeded by ``split_seed``), plus ``"held_out"``: the fold's validation images, which that run never reads."""
    if recipe.data.cv_checkpoint == "last":
        return folds
    root = Path(recipe.data.data_dir)
    image_ids = [row.image_id for row in index]
    groups, _ = patient_groups(root.parent if is_saved_dataset(root) else root, image_ids)
    group_of = dict(zip(image_ids, groups))
    presence_of = {row.image_id: class_presence(row, labels) for row in index}
    num_parts = max(2, round(1 / recipe.data.val_fraction))
    splits = []
    for k, fold in enumerate(folds):
        train = fold["train"]
        try:
            inner = make_folds(
                train, [presence_of[i] for i in train], [group_of[i] for i in train], num_parts, recipe.data.split_seed
            )[0]
        except DataError as error:
            raise DataError(
                f"Fold {k}: cannot carve an inner split for cv_checkpoint: inner from its {len(train)} training "
                f"images ({error}); use cv_checkpoint: last or a larger val_fraction."
            ) from error
        splits.append({**inner, "held_out": list(fold["val"])})
    return splits


def fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    """The plain recipe of fold ``fold``: output in ``OUTPUT_DIR/fold_<fold>`` (whose ``splits.json`` holds the
    fold), no ``num_folds``, ``run_name`` suffixed with the fold; its saved ``recipe.yaml`` retrains that fold.
    With ``cv_checkpoint: last``, ``load_best_model_at_end`` is off: the fold keeps its last checkpoint."""
    output_dir = str(fold_dir(recipe.training.output_dir, fold))
    changes = {"output_dir": output_dir}
    if recipe.data.cv_checkpoint == "last":
        changes["load_best_model_at_end"] = False
    if recipe.training.run_name:
        changes["run_name"] = f"{recipe.training.run_name}-fold{fold}"
    training = dataclasses.replace(recipe.training, **changes)
    data = dataclasses.replace(recipe.data, num_folds=None, fold="all")
    resolved = {**copy.deepcopy(recipe.resolved), "num_folds": None, "fold": "all", **changes}
    return dataclasses.replace(recipe, data=data, training=training, resolved=resolved)


def write_fold_split(folder: Path, split: Split) -> None:
    """Save fold ``split`` as ``folder/splits.json``; one already there must be the same fold."""
    path = folder / SPLITS_FILENAME
    if path.exists():
        saved = read_splits(path)
        if saved != split:
            raise DataError(
                f"{path} differs from its fold in {folder.parent / 'splits.json'}: the folds changed since this fold "
                "was trained; use a new output_dir."
            )
        return
    save_split(path, split)


def mark_fold_finished(folder: Path, fold: int, num_folds: int, metrics: dict[str, float]) -> None:
    """Write ``folder/cv_fold.json`` (the fold's final validation metrics): the fold has finished."""
    record = {"fold": fold, "num_folds": num_folds, "metrics": metrics}
    atomic_write_text(folder / FOLD_RESULT_FILENAME, json.dumps(record, indent=2) + "\n")
