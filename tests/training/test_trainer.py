"""SegmentationTrainer: every tensor restored on resume and best-model loading, exact resume with augmentation,
checkpoints renamed into place, batch of one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from cxrseg.config import DataArguments
from cxrseg.data.dataset import load_training_data
from cxrseg.data.sampling import BalancedSampler
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.model import build_model
from cxrseg.training.losses import DiceCELoss
from cxrseg.training.trainer import SegmentationTrainer, streaming_metrics
from tests.conftest import TINY_MODEL_CONFIG


class SnapshotOnSave(TrainerCallback):
    """Keeps a copy of every tensor at each save, to compare with what loading restores."""

    def __init__(self):
        self.states = {}
        self.model = None

    def on_save(self, args, state, control, **kwargs):
        self.states[state.global_step] = copy.deepcopy(self.model.state_dict())


def make_trainer(
    root, out, *, max_steps=4, batch_size=2, sampler=True, augmentation="none", num_workers=0, callbacks=(), **overrides
):
    torch.manual_seed(0)
    model, processor = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, image_size=64)
    data_args = DataArguments(data_dir=str(root), image_size=64, augmentation=augmentation, val_fraction=0.25)
    data = load_training_data(
        data_args, PNEUMOTHORAX, out / "splits.json", mean=processor.image_mean, std=processor.image_std
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        remove_unused_columns=False,
        label_names=["labels"],
        batch_eval_metrics=True,
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=num_workers,
        report_to="none",
        save_total_limit=None,
        **overrides,
    )
    compute, preprocess = streaming_metrics(PNEUMOTHORAX)
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=processor,
        compute_metrics=compute,
        preprocess_logits_for_metrics=preprocess,
        loss_fn=DiceCELoss(),
        train_sampler=BalancedSampler(data.train_is_positive, 0.5, 1.5, seed=0) if sampler else None,
        callbacks=list(callbacks),
    )
    for callback in callbacks:
        callback.model = model
    return trainer


def assert_same_tensors(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_restores_every_tensor_and_trains_no_extra_step(demo_root, tmp_path):
    snapshots = SnapshotOnSave()
    make_trainer(demo_root, tmp_path / "a", callbacks=[snapshots]).train()
    # checkpoints are written aside and renamed into place: nothing is left of the staging folder
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4"]
    resumed = make_trainer(demo_root, tmp_path / "b", max_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.state.global_step == 2
    assert_same_tensors(resumed.model.state_dict(), snapshots.states[2])


def test_the_plain_trainer_loses_backbone_tensors(demo_root, tmp_path):
    """Documents transformers #43701 (why we override loading). If it starts passing, the upstream bug is fixed."""
    snapshots = SnapshotOnSave()
    make_trainer(demo_root, tmp_path / "a", callbacks=[snapshots]).train()
    plain = make_trainer(demo_root, tmp_path / "b", max_steps=2)
    Trainer._load_from_checkpoint(plain, str(tmp_path / "a" / "checkpoint-2"))
    state = plain.model.state_dict()
    lost = [k for k in state if not torch.equal(state[k], snapshots.states[2][k])]
    if not lost:
        pytest.xfail("transformers restored every tensor: #43701 appears fixed upstream")
    assert any(k.startswith("backbone.") for k in lost)


def test_resume_mid_epoch_with_augmentation_and_a_worker_reaches_the_uninterrupted_weights(demo_root, tmp_path):
    """Random augmentation on, one data-loader worker (which prefetches), resumed two steps into the second epoch
    (6 steps per epoch): the draws are the same as without the interruption."""
    settings = dict(max_steps=10, augmentation="standard", num_workers=1)
    full = make_trainer(demo_root, tmp_path / "a", **settings)
    full.train()
    resumed = make_trainer(demo_root, tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-8"))
    assert resumed.state.global_step == 10 and len(resumed.get_train_dataloader()) == 6
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_best_model_loads_every_tensor(demo_root, tmp_path):
    snapshots = SnapshotOnSave()
    trainer = make_trainer(
        demo_root,
        tmp_path / "a",
        callbacks=[snapshots],
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer.train()
    best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    assert_same_tensors(trainer.model.state_dict(), snapshots.states[best_step])


def test_train_batch_of_one_does_not_crash(demo_root, tmp_path):
    trainer = make_trainer(demo_root, tmp_path / "a", max_steps=2, batch_size=1, sampler=False)
    trainer.train()
    assert trainer.state.global_step == 2


def test_evaluation_reports_streaming_metrics(demo_root, tmp_path):
    trainer = make_trainer(demo_root, tmp_path / "a", max_steps=1)
    metrics = trainer.evaluate()
    for key in ("eval_dice", "eval_iou", "eval_kaggle_dice", "eval_ap", "eval_best_f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0.0
    assert metrics["eval_num_images"] == 6
