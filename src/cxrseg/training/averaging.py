"""Checkpoint averaging: the mean of the weights of a run's last K checkpoints, with BatchNorm statistics
recomputed on its training images (the SIIM-ACR 1st place's last step; SWA's ``update_bn``), saved as a normal model
folder.

What is averaged: every floating-point tensor of the checkpoints' models (the arithmetic mean,
computed in float64, stored in the checkpoints' dtype); integer tensors (BatchNorm's ``num_batches_tracked``) are
the newest checkpoint's. An average of weights is not an average of BatchNorm statistics: the running mean and
variance of the averaged network are recomputed by ``torch.optim.swa_utils.update_bn`` (reset, then the cumulative
average over every batch, momentum None) on what training fed the network: one epoch of the recipe's sampler over
the run's training split (``splits.json``), at the run's ``image_size``, with the recipe's augmentation, seeded by
its ``seed``. UperNet's BatchNorm layers are in its decode and auxiliary heads (Swin uses
LayerNorm, which has no statistics).

The output folder (``from_pretrained`` loads it; ``cxrseg evaluate|predict|app|push`` take it): ``config.json``,
``model.safetensors`` and ``preprocessor_config.json`` (of the newest averaged checkpoint, weights replaced),
the run's ``recipe.yaml``, ``splits.json`` and prior mask, and :data:`~cxrseg.constants.AVERAGING_FILENAME` (which
checkpoints, how many images re-estimated BatchNorm). Not ``postprocess.json``: the rule was tuned on another model;
tune one with ``cxrseg evaluate --search``. For a cross-validation folder, each fold is averaged into
``OUT/fold_<k>/`` and ``OUT`` is a cross-validation folder itself (``cv.json``, ``splits.json``), so
``cxrseg evaluate --model OUT`` scores the averaged folds out of fold.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn
from transformers import AutoImageProcessor, UperNetForSemanticSegmentation, set_seed

from cxrseg.config import parse_recipe
from cxrseg.constants import (
    AVERAGING_FILENAME,
    CHECKPOINT_NAME,
    CV_FILENAME,
    ENSEMBLE_FILENAME,
    PRIOR_MASK_FILENAME,
    RECIPE_FILENAME,
    SPLITS_FILENAME,
)
from cxrseg.data.dataset import build_sampler, load_training_data
from cxrseg.errors import CheckpointError
from cxrseg.files import atomic_folder, atomic_write_text, check_output_folder
from cxrseg.inference.cv_folder import is_cv_folder, read_cross_validation
from cxrseg.labels import labels_from_config
from cxrseg.model import make_batchnorm_single_value_safe
from cxrseg.training.checkpoints import missing_files
from cxrseg.training.cross_validation import mark_fold_finished

logger = logging.getLogger(__name__)

AVERAGED_MODEL = "averaged model"  # the output folder's cxrseg marker (cxrseg.files.mark_output)
WEIGHTS_NAME = "model.safetensors"


def last_checkpoints(run_dir: str | os.PathLike, last: int) -> list[Path]:
    """The ``last`` complete ``checkpoint-N`` folders of ``run_dir`` with the largest N, oldest first. Raises
    :class:`~cxrseg.errors.CheckpointError` when there are fewer (saying how to keep more)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir()] if run_dir.is_dir() else []
    complete = [p for p in found if not missing_files(p) and (p / WEIGHTS_NAME).is_file()]
    complete.sort(key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))
    if len(complete) < last:
        raise CheckpointError(
            f"{run_dir} holds {len(complete)} complete checkpoint(s) with a single {WEIGHTS_NAME}, fewer than the "
            f"{last} to average. Train with --save_total_limit null (or at least {last + 1}) to keep them."
        )
    return complete[-last:]


def average_weights(checkpoints: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' model state dicts (module docstring), each read with ``from_pretrained`` (which
    maps the names stored on disk to the model's), one at a time (a float64 running sum). Raises
    :class:`~cxrseg.errors.CheckpointError` when they hold different tensors."""
    total: dict[str, torch.Tensor] = {}
    for path in checkpoints:
        state = UperNetForSemanticSegmentation.from_pretrained(path).state_dict()
        if total and (state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in total)):
            raise CheckpointError(f"{path} holds other tensors than {checkpoints[0]}: not checkpoints of one run.")
        for key, tensor in state.items():
            if tensor.is_floating_point():
                total[key] = total[key] + tensor.double() if key in total else tensor.double()
            else:
                total[key] = tensor.clone()  # the newest (num_batches_tracked)
    dtypes = {key: tensor.dtype for key, tensor in state.items()}
    return {
        key: (tensor / len(checkpoints)).to(dtypes[key]) if tensor.is_floating_point() else tensor
        for key, tensor in total.items()
    }


def recompute_batchnorm(
    model: UperNetForSemanticSegmentation,
    images: torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device,
    sampler: torch.utils.data.Sampler | None = None,
) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` on ``images`` (items with
    ``pixel_values`` float32 [3, S, S]) drawn by ``sampler`` (None: each image once, in order) with
    ``torch.optim.swa_utils.update_bn``; returns the number of images drawn."""
    loader = torch.utils.data.DataLoader(
        images,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=lambda items: torch.stack([item["pixel_values"] for item in items]),
    )
    make_batchnorm_single_value_safe(model)  # a last batch of one image must not fail in the 1x1 pooling branch
    model.to(device)
    update_bn(loader, model, device=device)
    model.eval()
    return len(images) if sampler is None else len(sampler)


def average_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    last: int,
    data_dir: str | None = None,
    max_bn_images: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> Path:
    """Average the ``last`` checkpoints of the training output folder ``run_dir`` (or of each fold of a
    cross-validation folder) into the model folder ``out`` (module docstring). data_dir: where the training images
    are (default: the run's ``recipe.yaml``); max_bn_images: at most this many training images for BatchNorm
    (default: all). ``out`` must be new, empty or an earlier averaged model, and apart from the run. Returns ``out``.
    """
    run_dir, out = Path(run_dir), Path(out)
    if last < 2:
        raise CheckpointError(f"--last must be at least 2 checkpoints to average, got {last}.")
    check_output_folder(out, AVERAGED_MODEL, inputs=[run_dir, data_dir])
    if is_cv_folder(run_dir):
        run = read_cross_validation(run_dir)
        plans = [(folder, Path(folder.name), last_checkpoints(folder, last)) for folder in run.fold_dirs]
        num_folds = run.num_folds
    else:
        plans = [(run_dir, Path("."), last_checkpoints(run_dir, last))]
    with atomic_folder(out, AVERAGED_MODEL) as building:
        for fold, (folder, relative, checkpoints) in enumerate(plans):
            _average_one(folder, building / relative, checkpoints, data_dir, max_bn_images, batch_size, device)
            if is_cv_folder(run_dir):  # finished, without metrics: the fold's were of its trained model
                mark_fold_finished(building / relative, fold, num_folds, {})
        if is_cv_folder(run_dir):
            for name in (CV_FILENAME, SPLITS_FILENAME, RECIPE_FILENAME, ENSEMBLE_FILENAME):
                if name == ENSEMBLE_FILENAME and not (run_dir / name).is_file():
                    continue  # the ensemble's weights: optional, the folds keep their order
                shutil.copy2(run_dir / name, building / name)
    return out


def _average_one(
    run_dir: Path,
    out: Path,
    checkpoints: list[Path],
    data_dir: str | None,
    max_bn_images: int | None,
    batch_size: int,
    device: str,
) -> None:
    """Average ``checkpoints`` of the run ``run_dir``, recompute BatchNorm on its training split, write ``out``."""
    newest = checkpoints[-1]
    recipe_path = run_dir / RECIPE_FILENAME
    if not recipe_path.is_file() or not (run_dir / SPLITS_FILENAME).is_file():
        raise CheckpointError(f"{run_dir} has no {RECIPE_FILENAME} and {SPLITS_FILENAME}: is it a training output?")
    argv = ["--config", str(recipe_path), "--max_eval_samples", "1"]
    argv += ["--max_train_samples", str(max_bn_images)] if max_bn_images else ["--max_train_samples", "null"]
    argv += ["--data_dir", data_dir] if data_dir else []
    recipe = parse_recipe(argv)
    model = UperNetForSemanticSegmentation.from_pretrained(newest)
    processor = AutoImageProcessor.from_pretrained(
        newest if (newest / "preprocessor_config.json").is_file() else run_dir
    )
    labels = labels_from_config(model.config)
    data = load_training_data(
        recipe.data, labels, run_dir / SPLITS_FILENAME, mean=processor.image_mean, std=processor.image_std
    )
    model.load_state_dict(average_weights(checkpoints))
    # BatchNorm statistics of what training fed the network (SWA's update_bn over the training loader): one epoch of
    # the recipe's sampler, with its augmentation, seeded. The weights were learnt against statistics of augmented
    # images; statistics of clean images shift every decision (test Dice 0.60 -> 0.53 in the CV demo, before this).
    set_seed(recipe.training.seed)
    sampler, _ = build_sampler(recipe.sampling, labels, data, seed=recipe.training.seed)
    num_images = recompute_batchnorm(model, data.train, batch_size, torch.device(device), sampler)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    processor.save_pretrained(out)
    for name in (RECIPE_FILENAME, SPLITS_FILENAME, PRIOR_MASK_FILENAME):  # the prior: of the same training split
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    summary = {"checkpoints": [path.name for path in checkpoints], "batchnorm_images": num_images}
    atomic_write_text(out / AVERAGING_FILENAME, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "Averaged %s of %s; BatchNorm recomputed on %d training images → %s",
        summary["checkpoints"],
        run_dir,
        num_images,
        out,
    )
