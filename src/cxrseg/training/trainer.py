"""``SegmentationTrainer``: the transformers Trainer with our loss on both heads, our epoch samplers, streaming
evaluation, checkpoints that appear whole (written aside, then renamed) and checkpoint loading that restores every
tensor."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, UperNetForSemanticSegmentation
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction, rotate_checkpoints

from cxrseg.data.sampling import EpochSampler, ShuffledSampler
from cxrseg.evaluation.baselines import BaselineScores
from cxrseg.evaluation.metrics import SegmentationMetrics
from cxrseg.evaluation.stream import target_planes
from cxrseg.labels import LabelSet
from cxrseg.model import AuxiliaryLogits
from cxrseg.training.checkpoints import STAGING_DIR, publish_checkpoint

logger = logging.getLogger(__name__)


class SegmentationTrainer(Trainer):
    """Trainer for UperNet segmentation.

    loss_fn: ``loss(logits [B, C, H, W], labels) -> scalar`` (:mod:`cxrseg.training.losses`), applied to the main logits
        and, times ``auxiliary_loss_weight``, to the auxiliary head's logits (captured by a hook in the same
        forward pass; the model's built-in loss is never computed).
    train_sampler: the training sampler (:mod:`cxrseg.data.sampling`; default :class:`ShuffledSampler` seeded with
        ``args.seed``), never used for evaluation. It yields :class:`~cxrseg.data.sampling.SampleKey` items, so the
        training dataset is a :class:`~cxrseg.data.dataset.AugmentedDataset`.
    """

    def __init__(
        self,
        *args: Any,
        loss_fn: nn.Module,
        auxiliary_loss_weight: float = 0.4,
        train_sampler: EpochSampler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.auxiliary_loss_weight = auxiliary_loss_weight
        if train_sampler is None and self.train_dataset is not None:
            train_sampler = ShuffledSampler(len(self.train_dataset), seed=self.args.seed)
        self.train_sampler = train_sampler
        self._checkpoint_root: Path | None = None  # while saving: the staging folder (see _save_checkpoint)
        self.auxiliary_logits = AuxiliaryLogits(self.model)
        self._auxiliary_in_outputs = False
        self.model.register_forward_hook(self._add_auxiliary_output)
        # Our loss is a per-batch mean: the Trainer must divide it by the gradient-accumulation steps.
        self.loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs["labels"]
        self._auxiliary_in_outputs = model.training
        try:
            outputs = model(pixel_values=inputs["pixel_values"])
        finally:
            self._auxiliary_in_outputs = False
        if model.training and isinstance(outputs, tuple):  # (outputs, auxiliary logits): _add_auxiliary_output
            outputs = outputs[0]
        size = labels.shape[-2:]
        logits = outputs.logits
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = self.loss_fn(logits, labels)
        auxiliary = self.auxiliary_logits.pop(size)
        if auxiliary is not None and self.auxiliary_loss_weight:
            loss = loss + self.auxiliary_loss_weight * self.loss_fn(auxiliary, labels)
        return (loss, outputs) if return_outputs else loss

    def _add_auxiliary_output(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        """In :meth:`compute_loss`'s training forward, make the model return ``(output, auxiliary logits)``.

        DDP (with the Trainer's default ``find_unused_parameters=True``) marks as unused, right after the forward,
        every parameter that none of the forward's outputs depends on. The auxiliary head feeds the loss only through
        :class:`AuxiliaryLogits`' hook, so without this its gradients would arrive for parameters already marked
        ("marked as ready twice") and multi-GPU training would fail at the first step.
        """
        if self._auxiliary_in_outputs and self.auxiliary_logits.value is not None:
            return output, self.auxiliary_logits.value
        return output

    def _init_training_state(
        self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int, resume_from_checkpoint, trial
    ) -> tuple[int, int]:
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        # The Trainer checks max_steps only after a step, so resuming a finished run would train one step more.
        if self.state.global_step >= max_steps:
            return num_train_epochs, 0
        return epochs_trained, steps_in_epoch

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        # Evaluation runs the unwrapped model on every process. DDP hands all processes process 0's buffers at the
        # start of each training forward, but then each updates its BatchNorm running statistics from its own batch:
        # without this, the other processes would evaluate with statistics that no checkpoint holds, and the metrics
        # (which choose the best checkpoint) would not be those of the weights saved.
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        return super().evaluate(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> EpochSampler | None:
        return self.train_sampler

    def _run_epoch(self, **kwargs: Any) -> Any:
        # The Trainer reaches the sampler's set_epoch through Accelerate's wrappers, except when it resumes mid-epoch
        # with several processes (a SkipBatchSampler around the BatchSamplerShard hides it): that epoch would replay
        # epoch 0's draws. Setting it here holds for every wrapping.
        self.train_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(**kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written inside :data:`~cxrseg.training.checkpoints.STAGING_DIR` and renamed to
        ``checkpoint-N`` once every process has written its part (each its RNG state), so a kill at any moment leaves
        the whole folder or none. Older checkpoints are rotated out only after the new one is in place."""
        run_dir = Path(self._get_output_dir(trial))
        staging = run_dir / STAGING_DIR
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
        self.accelerator.wait_for_everyone()
        self._checkpoint_root = staging
        try:
            super()._save_checkpoint(model, trial)  # writes staging/checkpoint-N: it asks _get_output_dir where
        finally:
            self._checkpoint_root = None
        self.accelerator.wait_for_everyone()
        if self.state.best_model_checkpoint == str(staging / name):  # every process recorded where it was written
            self.state.best_model_checkpoint = str(run_dir / name)
            if self.args.should_save:
                self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
        if self.args.should_save:
            publish_checkpoint(staging / name, run_dir / name)
            rotate_checkpoints(
                str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True
            )

    def _get_output_dir(self, trial: Any) -> str:
        return str(self._checkpoint_root) if self._checkpoint_root is not None else super()._get_output_dir(trial)

    # transformers 5.x loads checkpoints with a non-strict ``load_state_dict`` of the raw safetensors keys, which
    # leaves the Swin backbone unrestored (transformers issue #43701). We load through ``from_pretrained``, which
    # applies the same key conversions as saving did, and then copy strictly: any missing tensor is an error.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_every_tensor(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        load_every_tensor(self.model, self.state.best_model_checkpoint)


def load_every_tensor(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Copy every parameter and buffer of the model saved in ``checkpoint`` into ``model`` (strict)."""
    model = model.module if hasattr(model, "module") else model
    saved = UperNetForSemanticSegmentation.from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    result = model.load_state_dict(saved.state_dict(), strict=True)
    logger.info("Restored %d tensors from %s (%s).", len(saved.state_dict()), checkpoint, result)


def streaming_metrics(
    labels: LabelSet, threshold: float = 0.5, prior: np.ndarray | None = None
) -> tuple[Callable[..., dict[str, float]], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``compute_metrics`` (for ``batch_eval_metrics=True``) and ``preprocess_logits_for_metrics``.

    Logits become probabilities of the foreground classes at label resolution batch by batch — softmax without
    background for single-label, sigmoids for multi-label; [B, H, W] for one class, else [B, K, H, W] — so
    evaluation never holds more than a batch. Besides the model's metrics (:class:`SegmentationMetrics`), the
    baselines on the same images (:class:`~cxrseg.evaluation.baselines.BaselineScores`: the empty mask, and the
    ``prior`` mask, bool [K, H, W] at label resolution, when given).
    """
    names = labels.foreground
    metrics = SegmentationMetrics(threshold=threshold, num_classes=len(names), class_names=names)
    baselines = BaselineScores(names, prior)

    def preprocess(logits: torch.Tensor | tuple, label_ids: torch.Tensor) -> torch.Tensor:
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        size = label_ids.shape[-2:]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        probs = logits.float().sigmoid() if labels.multilabel else logits.float().softmax(dim=1)[:, 1:]
        return probs[:, 0] if len(names) == 1 else probs

    def compute(prediction: EvalPrediction, compute_result: bool = False) -> dict[str, float]:
        label_ids = prediction.label_ids
        label_ids = label_ids[0] if isinstance(label_ids, (tuple, list)) else label_ids
        target = target_planes(labels, torch.as_tensor(label_ids))
        metrics.update(prediction.predictions, target[:, 0] if len(names) == 1 else target)
        baselines.update(target)
        if not compute_result:
            return {}
        result = {**metrics.compute(), **baselines.compute()}
        metrics.reset()
        baselines.reset()
        # Undefined values (AP of a class without positive pixels) are left out: the Trainer writes JSON files.
        return {key: value for key, value in result.items() if not math.isnan(value)}

    return compute, preprocess
