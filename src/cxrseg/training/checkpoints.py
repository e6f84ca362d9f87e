"""Checkpoints: which one a run resumes from, and the rename that keeps a kill from leaving a broken one.

Writing: :class:`~cxrseg.training.trainer.SegmentationTrainer` saves ``checkpoint-N`` inside :data:`STAGING_DIR` and,
once
every process has written its part, :func:`publish_checkpoint` renames it into the output folder; so a
``checkpoint-N/`` there is complete whenever a run is killed.

Reading: :func:`resume_checkpoint` turns ``--resume_from_checkpoint`` into a checked folder. ``last`` takes the newest
complete ``checkpoint-N`` and skips, with a warning naming them, incomplete ones (a save interrupted in a run of an
older version or of another tool). A truncated or corrupt file in the chosen checkpoint is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import safe_globals
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from cxrseg.constants import CHECKPOINT_NAME
from cxrseg.errors import CheckpointError

logger = logging.getLogger(__name__)

STAGING_DIR = "_checkpoint-in-progress"
"""Where a checkpoint is written before it is renamed: a sibling of the checkpoints (one file system, so the rename is
atomic) whose name neither ``checkpoint-*`` globs nor the Trainer's Hub push (which skips ``_*``) pick up."""

RESUME_LAST = ("last", "true")  # "true": what the Trainer's own resume_from_checkpoint=True means


def missing_files(checkpoint: Path) -> list[str]:
    """The files a resumable checkpoint needs that ``checkpoint`` lacks: config, weights and the Trainer state (which
    the Trainer writes last, so a save cut short lacks at least that)."""
    missing = [name for name in (CONFIG_NAME, TRAINER_STATE_NAME) if not (checkpoint / name).is_file()]
    if not any((checkpoint / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
        missing.append(SAFE_WEIGHTS_NAME)
    return missing


def check_readable(checkpoint: Path) -> None:
    """Raise :class:`CheckpointError` naming the first file of ``checkpoint`` that is truncated or corrupt.

    Cheap checks that read no tensor: JSON files parse; safetensors headers parse and cover the file (safetensors'
    own check); ``torch.save`` files (``.pt``, ``.pth``, ``.bin``) are zip archives, and a truncated zip archive has
    no central directory, which opening it with ``zipfile`` reads.
    """
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(path, framework="pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()
        except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as error:
            raise CheckpointError(
                f"{path} is truncated or corrupt ({error}). Resume from another checkpoint "
                f"(--resume_from_checkpoint FOLDER), or move {checkpoint.name} out of {checkpoint.parent} and "
                "resume with `last`."
            ) from None


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest N among the complete ones (None if none);
    newer incomplete ones are skipped with a warning naming them."""
    if not output_dir.is_dir():
        return None
    folders = [path for path in output_dir.iterdir() if CHECKPOINT_NAME.match(path.name) and path.is_dir()]
    for folder in sorted(folders, key=lambda path: int(CHECKPOINT_NAME.match(path.name).group(1)), reverse=True):
        missing = missing_files(folder)
        if not missing:
            return folder
        logger.warning(
            "Skipping incomplete checkpoint %s (no %s): a run was stopped while saving it.", folder, ", ".join(missing)
        )
    return None


def is_resume_last(resume_from_checkpoint: str | None) -> bool:
    """Whether ``resume_from_checkpoint`` asks for the newest checkpoint (``last``, or ``true`` as the Trainer's
    own ``resume_from_checkpoint=True``; any case)."""
    return resume_from_checkpoint is not None and str(resume_from_checkpoint).lower() in RESUME_LAST


def resume_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> str | None:
    """The checked checkpoint folder to resume from, or None to start from scratch.

    resume_from_checkpoint: None; ``last`` (or ``true``) for the newest complete ``checkpoint-N`` in ``output_dir``
    (none: a warning, then None); or a checkpoint folder, which must exist and be complete.
    Raises :class:`CheckpointError` naming the folder or the unreadable file.
    """
    if resume_from_checkpoint is None:
        return None
    if is_resume_last(resume_from_checkpoint):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("No complete checkpoint in %s to resume from: training starts from scratch.", output_dir)
            return None
    else:
        checkpoint = Path(resume_from_checkpoint)
        if not checkpoint.is_dir():
            raise CheckpointError(
                f"Checkpoint {checkpoint} does not exist. Pass a checkpoint-N folder, or `last` for the newest one in "
                "output_dir."
            )
        missing = missing_files(checkpoint)
        if missing:
            raise CheckpointError(
                f"Checkpoint {checkpoint} is incomplete (no {', '.join(missing)}): a run was stopped while saving "
                "it. Resume from another checkpoint, or with `last`."
            )
    check_readable(checkpoint)
    logger.info("Resuming from %s.", checkpoint)
    return str(checkpoint)


TRAINER_PICKLES = ("optimizer.pt", "scheduler.pt", "scaler.pt")
"""The Trainer's other ``torch.save`` files of a checkpoint, which it loads with ``weights_only=True`` on resume."""


def check_fits(checkpoint: str | os.PathLike, model: nn.Module) -> None:
    """Raise :class:`CheckpointError` when the Trainer would fail to resume ``model`` from ``checkpoint``: a weight
    whose shape differs from the model's (a checkpoint of another model_config or task), or an RNG state
    (``rng_state*.pth``) or optimizer, scheduler or scaler state (:data:`TRAINER_PICKLES`) that torch cannot load
    with ``weights_only=True`` — the safe load the Trainer uses; cxrseg never loads them otherwise, and never
    suggests it."""
    checkpoint = Path(checkpoint)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    for weights in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(weights, framework="pt") as handle:
            for name in handle.keys():
                saved = tuple(handle.get_slice(name).get_shape())
                if name in shapes and shapes[name] != saved:
                    raise CheckpointError(
                        f"{weights} does not fit this model: {name} has shape {list(saved)} there and "
                        f"{list(shapes[name])} in the model. Resume with the model_config (and task) the checkpoint "
                        "was trained with, or start without resume_from_checkpoint."
                    )
    rng_files = sorted(checkpoint.glob("rng_state*.pth"))
    trainer_files = [checkpoint / name for name in TRAINER_PICKLES if (checkpoint / name).is_file()]
    for path in [*rng_files, *trainer_files]:
        rng = path in rng_files
        try:
            with safe_globals():  # mmap: the optimizer's tensors are not read, only what the pickle names
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if rng and (not isinstance(state, dict) or not {"python", "numpy", "cpu"} <= state.keys()):
                raise ValueError("not the Trainer's RNG state (python, numpy, cpu)")
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError) as error:
            plain = isinstance(error, ValueError) and not isinstance(error, pickle.UnpicklingError)
            reason = str(error).split("\n")[0] if plain else "it holds objects that are not plain data"
            fix = f", or delete {path.name} to resume without the saved random state" if rng else ""
            raise CheckpointError(
                f"{path} cannot be loaded safely ({reason}), and cxrseg never loads a checkpoint file unsafely. "
                f"Resume from another checkpoint{fix}."
            ) from None


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Rename the fully written ``staged`` folder to ``final``, then remove the staging folder if it is empty.

    A folder already at ``final`` (left incomplete by an interrupted run, or an older save of the same step when a run
    is resumed from an earlier checkpoint) is renamed aside first and deleted only once ``staged`` is in its place.
    """
    replaced = staged.with_name(f"{staged.name}-replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        os.replace(final, replaced)
    os.replace(staged, final)
    shutil.rmtree(replaced, ignore_errors=True)
    try:
        staged.parent.rmdir()
    except OSError:  # not empty: left for the next save to clear
        pass
