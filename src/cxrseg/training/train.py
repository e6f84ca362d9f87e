"""The training pipeline, top to bottom: seed → logging → start-up checks → last checkpoint → data → model → loss
and sampler → trainer → train and save → evaluate → model card and push. Each stage is a call into the library;
``run_train.py`` calls :func:`main`, which runs :func:`train` once, or :func:`train_folds` for a recipe with
``num_folds`` (cross-validation, :mod:`cxrseg.training.cross_validation`)."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback, TrainingArguments, set_seed

from cxrseg.config import DEMO_TASKS, DataArguments, Recipe, check_task_settings, parse_recipe, save_recipe
from cxrseg.constants import RECIPE_FILENAME, SPLITS_FILENAME
from cxrseg.data.dataset import build_sampler, data_labels, index_training_source, load_training_data
from cxrseg.data.png_layout import IndexedImage
from cxrseg.data.prior import save_prior_mask
from cxrseg.data.splits import save_split
from cxrseg.errors import CxrsegError, OutputLockedError, RecipeError, environment_problem, report
from cxrseg.files import TRAINING_RUN, check_output_folder, lock_output, mark_output
from cxrseg.hub.access import check_hub_access, hub_dataset_id, is_hub_id
from cxrseg.hub.card import write_model_card
from cxrseg.hub.checkpoints import HubCheckpointPush, download_checkpoint
from cxrseg.hub.push import push_folder
from cxrseg.inference.cv_folder import fold_dir, fold_is_finished
from cxrseg.labels import LabelSet
from cxrseg.model import build_model, check_model_runs
from cxrseg.plots import plot_training_curves
from cxrseg.synthetic import DEMO_DATA_MAKERS
from cxrseg.training.checkpoints import check_fits, is_resume_last, resume_checkpoint
from cxrseg.training.cross_validation import (
    fold_recipe,
    fold_training_splits,
    mark_fold_finished,
    prepare_folds,
    write_fold_split,
)
from cxrseg.training.losses import build_loss
from cxrseg.training.tracking import check_tracking, finish_tracking
from cxrseg.training.trainer import SegmentationTrainer, streaming_metrics

logger = logging.getLogger("cxrseg.training.train")


def train(
    recipe: Recipe,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    last_run: bool = True,
    indexed: tuple[datasets.Dataset, list[IndexedImage]] | None = None,
) -> dict[str, float]:
    """Run one recipe; returns the final evaluation metrics (``eval_*``). ``callbacks`` join the Trainer's own.
    last_run: False keeps the process group (and the trackers' process state) for another run in this program.
    indexed: the recipe's data already indexed (:func:`~cxrseg.data.dataset.index_training_source`), as the folds
    of a cross-validation share it.

    Every check runs before the first write; then the output folder's lock (:func:`lock_run`) is taken and held
    until the run ends, so a second run on the same folder is refused."""
    with ExitStack() as held:
        metrics = _train(recipe, callbacks, last_run, indexed, held)  # its Trainer and model are unreachable now
        if last_run:
            leave_process_group()
    return metrics


def leave_process_group() -> None:
    """End this process's part in the distributed run, on every rank, once the last collective is done: destroy the
    process group and free it now, its threads joined, rather than at interpreter exit.

    ``destroy_process_group`` only drops torch's own references; a DDP model (its reducer) holds the group too, and
    a Trainer is kept by reference cycles until a garbage collection, often the one at exit. Until the group is
    freed its gloo worker threads run, and one may still hold the last collective's tensors: releasing them takes
    the GIL, which during interpreter finalization ends the thread by an unwind that aborts the process ("terminate
    called without an active exception", pytorch/pytorch#38228). So the run's objects are collected first, while
    ``group`` keeps the group; dropping ``group`` then frees it through its Python object, whose destructor releases
    the GIL while it joins the threads (freed inside the collection, by the reducer, it would hold the GIL, and a
    worker waiting for it would never end)."""
    group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
    PartialState().destroy_process_group()
    gc.collect()
    del group


def lock_run(output_dir: Path, args: TrainingArguments) -> AbstractContextManager:
    """Take ``output_dir``'s lock (:func:`~cxrseg.files.lock_output`) in the main process (rank 0 of a distributed
    run) and tell every process whether it got it: a refused run raises the same one-line
    :class:`~cxrseg.errors.OutputLockedError` on every rank, so no rank waits for a peer that has left."""
    lock, refusal = nullcontext(), None
    if args.process_index == 0:
        try:
            lock = lock_output(output_dir)
        except OutputLockedError as error:
            refusal = str(error)
    if args.world_size > 1:
        refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal is not None:
        raise OutputLockedError(refusal)
    return lock


def _train(
    recipe: Recipe,
    callbacks: Sequence[TrainerCallback],
    last_run: bool,
    indexed: tuple[datasets.Dataset, list[IndexedImage]] | None,
    held: ExitStack,
) -> dict[str, float]:
    if recipe.data.num_folds is not None:  # train_folds trains each fold through here with num_folds unset
        raise RecipeError(
            "train() runs one recipe; a recipe with num_folds trains its folds with train_folds() "
            "(cxrseg.training.train.train_folds), as run_train.py and `cxrseg train` do."
        )
    model_args, data_args, loss_args, sampling_args, args = (
        recipe.model,
        recipe.data,
        recipe.loss,
        recipe.sampling,
        recipe.training,
    )
    # ------------------------------------------------------------------ Seed and logging
    set_seed(args.seed)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = args.get_process_log_level()
    for name in ("cxrseg", "transformers", "datasets"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    output_dir = Path(args.output_dir)

    # ------------------------------------------------------------------ Start-up checks (output folder, tracking, Hub)
    # Fail now rather than after training. The Trainer's own push is off: HubCheckpointPush pushes the saves as
    # hub_strategy says, and push_folder makes the final commit (our model card, redacted copies). The Hub token is
    # recipe.hub_token, never in TrainingArguments, which every checkpoint pickles (training_args.bin).
    check_output_folder(output_dir, TRAINING_RUN, inputs=run_inputs(recipe), may_hold=[SPLITS_FILENAME])
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    hub_token = recipe.hub_token
    hub_model_id = args.hub_model_id
    if args.process_index == 0:
        check_tracking(args.report_to)
        if push_to_hub:
            hub_model_id = check_hub_access(args.hub_model_id or output_dir.name, hub_token)
            push = HubCheckpointPush(
                hub_model_id,
                args.hub_strategy,
                token=hub_token,
                private=args.hub_private_repo,
                always_push=args.hub_always_push,
            )
            callbacks = [*callbacks, push]
    if is_hub_id(args.resume_from_checkpoint):  # a Hub repo: continue from its pushed checkpoint
        with args.main_process_first(desc="checkpoint download"):
            args.resume_from_checkpoint = str(download_checkpoint(args.resume_from_checkpoint, hub_token))

    # ------------------------------------------------------------------ Last checkpoint
    # resume_from_checkpoint: a checkpoint folder, or "last" for the newest complete checkpoint-N in output_dir
    # (incomplete ones skipped with a warning; none: a warning, then from scratch). A corrupt one stops the run here.
    last_checkpoint = resume_checkpoint(args.resume_from_checkpoint, output_dir)

    # ------------------------------------------------------------------ Data and model
    # The label set is the data's (its labels.json); a recipe that names a task must agree.
    with args.main_process_first(desc="demo data and mask index"):
        write_demo_data_if_asked(data_args, model_args.task)
        labels = data_labels(data_args.data_dir)
        check_task_settings(recipe, labels)
        model, processor = build_model(
            model_args.model_name_or_path, model_args.model_config, labels, data_args.image_size
        )
        if recipe.precision.channels_last:  # the optimizer's state follows the parameters' layout
            model = model.to(memory_format=torch.channels_last)
        # A dry forward pass and the checkpoint's shapes and RNG state: failures the first training step (or the
        # Trainer's resume) would meet, met now, before anything is written.
        check_model_runs(model, data_args.image_size, model_args.model_name_or_path or "model_config")
        if last_checkpoint is not None:
            check_fits(last_checkpoint, model)
        data = load_training_data(
            data_args,
            labels,
            output_dir / SPLITS_FILENAME,
            mean=processor.image_mean,
            std=processor.image_std,
            indexed=indexed,
        )

    # ------------------------------------------------------------------ Loss and sampler
    loss_fn = build_loss(loss_args, labels, data.pixel_counts, data.num_pixels)
    if loss_fn.class_weights is not None:
        logger.info("Class weights: %s", dict(zip(labels.names, [round(w, 4) for w in loss_fn.class_weights.tolist()])))
    sampler, nothing_to_balance = build_sampler(sampling_args, labels, data, seed=args.seed)
    if nothing_to_balance is not None:  # said once, and recorded in the saved recipe
        if args.process_index == 0:
            logger.warning(
                "balanced_sampling: %s, so there is nothing to balance; training shuffles every image once per epoch "
                "instead (recorded in %s as balanced_sampling: false). To balance a rarer class, name it in "
                "balance_classes.",
                nothing_to_balance,
                RECIPE_FILENAME,
            )
        recipe.override("balanced_sampling", False, f"{nothing_to_balance}: nothing to balance")

    # ------------------------------------------------------------------ Output folder
    # Everything the run needs is checked: only now is output_dir created or changed (a run that fails earlier
    # leaves it as it was).
    held.enter_context(lock_run(output_dir, args))  # one run per output folder, until this run ends
    if args.should_save:
        mark_output(output_dir, TRAINING_RUN)
        save_recipe(recipe, output_dir / RECIPE_FILENAME)
        if not (output_dir / SPLITS_FILENAME).exists():  # a saved split (perhaps the user's) is never rewritten
            save_split(output_dir / SPLITS_FILENAME, data.split)
        save_prior_mask(output_dir, data.prior_mask)  # the baseline that `cxrseg evaluate` reports too

    # ------------------------------------------------------------------ Trainer
    compute_metrics, preprocess_logits = streaming_metrics(labels, prior=data.prior_mask)
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
        loss_fn=loss_fn,
        auxiliary_loss_weight=loss_args.auxiliary_loss_weight,
        train_sampler=sampler,
        callbacks=list(callbacks),
    )

    # ------------------------------------------------------------------ Train and save
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # ------------------------------------------------------------------ Evaluate (the best model, on validation)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
        logger.info(
            "Model saved to %s: load it with UperNetForSemanticSegmentation.from_pretrained(%r)",
            output_dir,
            str(output_dir),
        )

    # ------------------------------------------------------------------ Model card and push to the Hub
    if trainer.is_world_process_zero():
        if push_to_hub:  # push_folder writes the card first, then uploads
            url = push_folder(output_dir, hub_model_id, private=args.hub_private_repo, token=hub_token)
            logger.info("Pushed %s to %s", output_dir.name, url)
        else:
            write_model_card(output_dir, hub_model_id)
    return metrics


def write_demo_data_if_asked(data_args: DataArguments, task: str | None) -> None:
    """With ``generate_demo_data``, write the synthetic demo dataset of ``task`` (default pneumothorax) to a missing
    ``data_dir``."""
    if (
        data_args.generate_demo_data
        and not hub_dataset_id(data_args.data_dir)
        and not Path(data_args.data_dir).exists()
    ):
        task = task or DEMO_TASKS[0]
        if task not in DEMO_DATA_MAKERS:
            raise RecipeError(
                f"generate_demo_data draws {', '.join(DEMO_DATA_MAKERS)} demo data; task {task!r} has none (prepare "
                "your data with `cxrseg prepare folder` and set generate_demo_data: false)."
            )
        logger.info("Writing the synthetic %s demo dataset to %s", task, data_args.data_dir)
        DEMO_DATA_MAKERS[task](data_args.data_dir, num_images=data_args.demo_num_images, seed=0)


def run_inputs(recipe: Recipe) -> list[str | None]:
    """What a run reads, which its output_dir must not be, hold or lie inside: the data, and a local model folder."""
    model = recipe.model.model_name_or_path
    return [recipe.data.data_dir, model if Path(model or "").is_dir() else None]


def train_folds(recipe: Recipe, callbacks: Sequence[TrainerCallback] = ()) -> dict[int, dict[str, float]]:
    """Cross-validation: train the recipe's folds (``fold: all`` or one index) one after the other in this program;
    returns each trained fold's final evaluation metrics. Layout and resumption:
    :mod:`cxrseg.training.cross_validation`.

    Each fold is a full :func:`train` run of :func:`~cxrseg.training.cross_validation.fold_recipe` (so multi-GPU,
    seeds and
    checkpoints work as for one run), as the Trainer's own hyper-parameter search trains trial after trial. Between
    folds: the process group stays up (set up once by the launcher, left at the very end), the trackers' runs are
    finished (one W&B run per fold), and the fold's model, optimizer and compiled graphs are released.
    """
    args, data_args = recipe.training, recipe.data
    if args.push_to_hub:
        raise RecipeError(
            "push_to_hub with num_folds: push a fold's folder after training (`cxrseg push --model OUTPUT_DIR/fold_0 "
            "...`)."
        )
    output_dir = Path(args.output_dir)
    check_output_folder(output_dir, TRAINING_RUN, inputs=run_inputs(recipe), may_hold=[SPLITS_FILENAME])
    with args.main_process_first(desc="demo data, mask index and model"):
        write_demo_data_if_asked(data_args, recipe.model.task)
        labels = data_labels(data_args.data_dir)
        check_task_settings(recipe, labels)
        indexed = index_training_source(data_args, labels)  # once for every fold
        prepare_folds(recipe, labels, indexed[1], write=False)  # checked before anything is written
        source = recipe.model.model_name_or_path
        model, _ = build_model(source, recipe.model.model_config, labels, data_args.image_size)
        check_model_runs(model, data_args.image_size, source or "model_config")
        del model  # each fold builds its own; this one only proves, before the first write, that it can
    with lock_run(output_dir, args):  # the whole cross-validation; each fold's train() locks its fold folder too
        with args.main_process_first(desc="folds"):
            folds = fold_training_splits(recipe, labels, indexed[1], prepare_folds(recipe, labels, indexed[1]))
        return _train_folds(recipe, callbacks, labels, indexed, folds)


def _train_folds(
    recipe: Recipe,
    callbacks: Sequence[TrainerCallback],
    labels: LabelSet,
    indexed: tuple[datasets.Dataset, list[IndexedImage]],
    folds: list,
) -> dict[int, dict[str, float]]:
    args, data_args, output_dir = recipe.training, recipe.data, Path(recipe.training.output_dir)
    if args.should_save:
        save_recipe(recipe, output_dir / RECIPE_FILENAME)
    resuming = is_resume_last(args.resume_from_checkpoint)
    chosen = range(data_args.num_folds) if data_args.fold == "all" else [int(data_args.fold)]
    results = {}
    for fold in chosen:
        folder = fold_dir(output_dir, fold)
        if resuming and fold_is_finished(folder):
            logger.info("Fold %d has finished (%s); skipping it.", fold, folder)
            continue
        logger.info("Fold %d of %d: training in %s.", fold, data_args.num_folds, folder)
        if args.should_save:
            mark_output(folder, TRAINING_RUN)
            write_fold_split(folder, folds[fold])
        results[fold] = train(fold_recipe(recipe, fold), callbacks, last_run=False, indexed=indexed)
        if args.should_save:
            mark_fold_finished(folder, fold, data_args.num_folds, results[fold])
        finish_tracking()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch._dynamo.reset()  # a new model per fold: without it torch.compile recompiles into a full cache
    for fold, metrics in results.items():
        logger.info("Fold %d: %s", fold, {k: round(v, 4) for k, v in metrics.items() if k in CV_LOG_KEYS})
    leave_process_group()
    return results


CV_LOG_KEYS = ("eval_dice", "eval_kaggle_dice", "eval_ap", "eval_loss")


def main(argv: list[str] | None = None) -> int:
    recipe = None
    try:
        recipe = parse_recipe(argv)
        if recipe.data.num_folds is None:
            train(recipe)
        else:
            train_folds(recipe)
    except CxrsegError as error:  # a user error: one line, its exit status; anything else is a bug (traceback)
        return report(error)
    except Exception as error:  # the machine's (disk full, no permission): one line saying what to free or change
        problem = environment_problem(error, [recipe.training.output_dir if recipe else None])
        if problem is None:
            raise
        return report(problem)
    return 0
