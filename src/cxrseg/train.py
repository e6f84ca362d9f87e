"""The training pipeline, top to bottom: seed → logging → start-up checks → last checkpoint → data → model → loss
and sampler → trainer → train and save → evaluate → model card and push. Each stage is a call into the library;
``run_train.py`` calls :func:`main`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import datasets
import transformers
from transformers import TrainerCallback, set_seed

from cxrseg.checkpoints import resume_checkpoint
from cxrseg.config import Recipe, parse_recipe, save_recipe
from cxrseg.data.dataset import load_training_data
from cxrseg.data.splits import save_split
from cxrseg.errors import CxrsegError, report
from cxrseg.files import TRAINING_RUN, check_output_folder, mark_output
from cxrseg.hub import check_hub_access, is_hub_id, push_folder, write_model_card
from cxrseg.hub_checkpoints import HubCheckpointPush, download_checkpoint
from cxrseg.labels import get_labels
from cxrseg.losses import build_loss
from cxrseg.model import build_model
from cxrseg.plots import plot_training_curves
from cxrseg.sampling import build_sampler
from cxrseg.synthetic import DEMO_DATA_MAKERS
from cxrseg.tracking import check_tracking
from cxrseg.trainer import SegmentationTrainer, streaming_metrics

logger = logging.getLogger("cxrseg.train")


def train(recipe: Recipe, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Run one recipe; returns the final evaluation metrics (``eval_*``). ``callbacks`` join the Trainer's own."""
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
    model_folder = model_args.model_name_or_path if Path(model_args.model_name_or_path or "").is_dir() else None
    check_output_folder(output_dir, TRAINING_RUN, inputs=[data_args.data_dir, model_folder])
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
    labels = get_labels(model_args.task)
    with args.main_process_first(desc="demo data and mask index"):
        if data_args.generate_demo_data and not Path(data_args.data_dir).exists():
            logger.info("Writing the synthetic demo dataset to %s", data_args.data_dir)
            DEMO_DATA_MAKERS[labels.task](data_args.data_dir, num_images=data_args.demo_num_images, seed=0)
        model, processor = build_model(
            model_args.model_name_or_path, model_args.model_config, labels, data_args.image_size
        )
        data = load_training_data(
            data_args, labels, output_dir / "splits.json", mean=processor.image_mean, std=processor.image_std
        )

    # ------------------------------------------------------------------ Loss and sampler
    loss_fn = build_loss(loss_args, labels, data.pixel_counts, data.num_pixels)
    if loss_fn.class_weights is not None:
        logger.info("Class weights: %s", dict(zip(labels.names, [round(w, 4) for w in loss_fn.class_weights.tolist()])))
    sampler = build_sampler(sampling_args, labels, data, seed=args.seed)

    # ------------------------------------------------------------------ Output folder
    # Everything the run needs is checked: only now is output_dir created or changed (a run that fails earlier
    # leaves it as it was).
    if args.should_save:
        mark_output(output_dir, TRAINING_RUN)
        save_recipe(recipe, output_dir / "recipe.yaml")
        save_split(output_dir / "splits.json", data.split)

    # ------------------------------------------------------------------ Trainer
    compute_metrics, preprocess_logits = streaming_metrics(labels.multilabel, list(labels.foreground))
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
        write_model_card(output_dir, hub_model_id)
        if push_to_hub:
            url = push_folder(output_dir, hub_model_id, private=args.hub_private_repo, token=hub_token)
            logger.info("Pushed %s to %s", output_dir.name, url)
    trainer.end()  # finish the trackers and leave the process group (without it DDP processes can abort at exit)
    return metrics


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_recipe(argv))
    except CxrsegError as error:  # a user error: one line, its exit status; anything else is a bug (traceback)
        return report(error)
    return 0
