"""Recipe arguments and the ``--config`` parser.

A recipe is a flat YAML whose keys are the fields of :class:`ModelArguments`, :class:`DataArguments`,
:class:`LossArguments`, :class:`SamplingArguments`, :class:`PrecisionArguments` and
``transformers.TrainingArguments``. Precedence:
dataclass default < :data:`RECIPE_DEFAULTS` < YAML < command line (``--key value`` or ``--key=value``).
An unknown key is an error that names the key and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from cxrseg.data.transforms import AUGMENTATIONS
from cxrseg.errors import RecipeError
from cxrseg.files import atomic_write_text
from cxrseg.labels import TASKS, get_labels


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default="openmmlab/upernet-swin-base",
        metadata={"help": "Hub id or local folder of a UperNet model; null to build `model_config` from scratch."},
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "Inline UperNet config (YAML mapping or JSON string) with a `backbone_config` mapping "
            "(model_type swin); used when model_name_or_path is null (tiny offline models)."
        },
    )
    task: str = field(default="pneumothorax", metadata={"help": "pneumothorax (softmax) or chestxdet (multi-label)."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RecipeError(f"task must be one of {sorted(TASKS)}, got {self.task!r}.")
        if self.model_name_or_path is None and self.model_config is None:
            raise RecipeError("Set model_name_or_path (a Hub id or folder) or model_config (an inline config).")


@dataclass
class DataArguments:
    data_dir: str = field(default="data/siim-png", metadata={"help": "PNG layout root (or a saved datasets folder)."})
    image_size: int = field(default=512, metadata={"help": "Square training and evaluation size, pixels."})
    augmentation: str = field(default="standard", metadata={"help": f"One of {AUGMENTATIONS}."})
    val_fraction: float = field(default=0.1, metadata={"help": "Held-out fraction, stratified by positivity."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the train/validation split (or of the folds)."})
    num_folds: int | None = field(
        default=None,
        metadata={
            "help": "K-fold cross-validation: K models, fold k in OUTPUT_DIR/fold_<k>/ validating on the k-th part "
            "(patients never split; stratified like the split); val_fraction is then unused. null: one split."
        },
    )
    fold: str = field(
        default="all", metadata={"help": "With num_folds: 'all' trains every fold in turn, or one index 0..K-1."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training rows (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation rows (quick runs)."})
    preprocessing_num_workers: int = field(default=1, metadata={"help": "Processes that index the masks."})
    generate_demo_data: bool = field(
        default=False, metadata={"help": "Write the synthetic demo dataset to data_dir when it is missing."}
    )
    demo_num_images: int = field(default=400, metadata={"help": "Images in the generated demo dataset."})

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise RecipeError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise RecipeError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        self.fold = str(self.fold)
        if self.num_folds is None:
            if self.fold != "all":
                raise RecipeError(f"fold: {self.fold} needs num_folds (the number of cross-validation folds).")
            return
        if self.num_folds < 2:
            raise RecipeError(f"num_folds must be at least 2 (or null for one split), got {self.num_folds}.")
        if self.fold != "all" and not (self.fold.isdigit() and int(self.fold) < self.num_folds):
            raise RecipeError(
                f"fold must be 'all' or an index 0..{self.num_folds - 1} for num_folds: {self.num_folds}, "
                f"got {self.fold!r}."
            )


@dataclass
class LossArguments:
    lambda_ce: float = field(default=1.0, metadata={"help": "Weight of the (class-weighted) cross-entropy term."})
    lambda_dice: float = field(default=1.0, metadata={"help": "Weight of the soft Dice term."})
    dice_smooth: float = field(default=1e-5, metadata={"help": "Dice smoothing added to numerator and denominator."})
    batch_dice: bool = field(default=False, metadata={"help": "Dice over the whole batch instead of per image."})
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "null (unweighted), 'auto' (w_c = N / (C n_c) from the training masks), or explicit weights: "
            "a YAML list or '0.5,54.2' on the command line. Multi-label: BCE positive weights."
        },
    )
    max_pos_weight: float = field(default=100.0, metadata={"help": "Cap of 'auto' multi-label positive weights."})
    auxiliary_loss_weight: float = field(default=0.4, metadata={"help": "Weight of the auxiliary head's loss."})

    def __post_init__(self) -> None:
        weights = self.class_weights
        if isinstance(weights, str) and weights not in ("auto", "none", "null"):
            weights = [float(w) for w in weights.split(",")]
        if weights in ("none", "null"):
            weights = None
        if isinstance(weights, (list, tuple)):
            weights = [float(w) for w in weights]
        self.class_weights = weights


@dataclass
class SamplingArguments:
    balanced_sampling: bool = field(
        default=False,
        metadata={
            "help": "Balance the training draws: single-label tasks undersample negatives and oversample positives "
            "(BalancedSampler); multi-label tasks favour images with rare classes (ClassBalancedSampler)."
        },
    )
    negative_keep_ratio: float = field(
        default=1.0, metadata={"help": "Single-label: fraction of negatives kept each epoch."}
    )
    positive_weight: float = field(
        default=1.0, metadata={"help": "Single-label: draw weight of a positive relative to a negative."}
    )
    class_balance_power: float = field(
        default=0.5,
        metadata={
            "help": "Multi-label: an image is drawn with weight (n_max / n_c) ** power of its rarest class c "
            "(n_c: training images holding c); 0 = uniform, 0.5 = LVIS repeat-factor style, 1 = inverse frequency."
        },
    )
    empty_image_weight: float = field(
        default=1.0,
        metadata={"help": "Multi-label: draw weight of an image without findings (the most frequent class weighs 1)."},
    )


@dataclass
class PrecisionArguments:
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 + TF32 on a CUDA GPU that supports bf16, else fp32), bf16, fp16 or no. Sets "
            "TrainingArguments' bf16/fp16/tf32 unless the recipe sets those itself."
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise RecipeError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}.")


PRECISIONS = ("auto", "bf16", "fp16", "no")


def precision_defaults(mixed_precision: str) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16/tf32 for ``mixed_precision`` on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return {"bf16": mixed_precision == "bf16", "fp16": mixed_precision == "fp16", "tf32": cuda}


ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    LossArguments,
    SamplingArguments,
    PrecisionArguments,
    TrainingArguments,
)
OWN_CLASSES = ARGUMENT_CLASSES[:-1]

RECIPE_DEFAULTS: dict[str, Any] = {
    # set_transform's columns are not model arguments; the Trainer must not drop the source columns.
    "remove_unused_columns": False,
    "label_names": ["labels"],
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "steps",
    "logging_steps": 10,
    "metric_for_best_model": "dice",
    "greater_is_better": True,
    "load_best_model_at_end": True,
    "save_total_limit": 2,
    "batch_eval_metrics": True,
    "output_dir": "outputs/run",
}
SECRET_KEYS = ("hub_token",)


@dataclass
class Recipe:
    """The parsed arguments plus the flat mapping that reproduces them (``recipe.yaml``)."""

    model: ModelArguments
    data: DataArguments
    loss: LossArguments
    sampling: SamplingArguments
    precision: PrecisionArguments
    training: TrainingArguments
    resolved: dict[str, Any]
    source: str | None


def _known_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cli_keys(argv: list[str]) -> list[str]:
    return [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]


def parse_recipe(argv: list[str] | None = None) -> Recipe:
    """Parse ``--config FILE`` plus overrides (see module docstring). Raises :class:`~cxrseg.errors.RecipeError`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    recipe: dict[str, Any] = {}
    if known.config is not None:
        path = Path(known.config)
        if not path.is_file():
            raise RecipeError(f"Recipe {path} does not exist (recipes live in recipe/).")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, dict):
            raise RecipeError(f"Recipe {path} must be a flat mapping of keys to values.")
    keys = _known_keys()
    for key in recipe:
        if key not in keys:
            raise RecipeError(f"Unknown key {key!r} in {known.config}. Known keys are the fields of {_class_names()}.")
    for key in _cli_keys(rest):
        if key not in keys and key not in ("help", "h"):
            raise RecipeError(
                f"Unknown key {key!r} on the command line. Known keys are the fields of {_class_names()}."
            )
    pre.add_argument("--mixed_precision", default=recipe.get("mixed_precision", "auto"))
    precision = precision_defaults(pre.parse_known_args(rest)[0].mixed_precision)
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)
    parser.set_defaults(**{**RECIPE_DEFAULTS, **precision, **recipe})
    model, data, loss, sampling, precision_args, training = parser.parse_args_into_dataclasses(args=rest)
    _check_task_settings(model, sampling)
    explicit = set(RECIPE_DEFAULTS) | set(recipe) | set(_cli_keys(rest))
    resolved: dict[str, Any] = {}
    for args in (model, data, loss, sampling, precision_args):
        resolved.update({f.name: _plain(getattr(args, f.name)) for f in dataclasses.fields(args)})
    for f in dataclasses.fields(TrainingArguments):
        if f.name in explicit and f.name not in SECRET_KEYS:
            resolved[f.name] = _plain(getattr(training, f.name))
    return Recipe(model, data, loss, sampling, precision_args, training, resolved, known.config)


def _check_task_settings(model: ModelArguments, sampling: SamplingArguments) -> None:
    """Settings that only one kind of task uses are an error on the other, before any data is read."""
    if get_labels(model.task).multilabel and (sampling.negative_keep_ratio, sampling.positive_weight) != (1.0, 1.0):
        raise RecipeError(
            f"negative_keep_ratio and positive_weight apply to single-label tasks; task {model.task} balances its "
            "classes with class_balance_power and empty_image_weight."
        )


def _class_names() -> str:
    return ", ".join(cls.__name__ for cls in ARGUMENT_CLASSES)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe as YAML (atomically); reloading it with ``--config`` reproduces the run."""
    path = Path(path)
    header = f"# Resolved recipe (from {Path(recipe.source).name if recipe.source else 'defaults'} + overrides)\n"
    atomic_write_text(path, header + yaml.safe_dump(recipe.resolved, sort_keys=False))
