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
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from cxrseg.errors import RecipeError
from cxrseg.files import atomic_write_text
from cxrseg.labels import LabelSet

AUGMENTATIONS = ("none", "standard", "aggressive")  # the recipe's `augmentation` (cxrseg.data.transforms)
DEMO_TASKS = ("pneumothorax", "chestxdet", "anatomy")  # what generate_demo_data draws (cxrseg.synthetic)


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
    task: str | None = field(
        default=None,
        metadata={
            "help": "Optional: the label set comes from the data's labels.json; a task named here must be the one "
            "the data declares (a check). With generate_demo_data it picks the demo drawn: "
            f"{', '.join(DEMO_TASKS)} (default {DEMO_TASKS[0]})."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.task, str) and self.task.lower() in ("null", "none"):  # `--task null` on the command line
            self.task = None
        if self.task is not None and not (isinstance(self.task, str) and self.task.strip()):
            raise RecipeError(f"task must be a name (or null to take the data's), got {self.task!r}.")
        if self.model_name_or_path is None and self.model_config is None:
            raise RecipeError("Set model_name_or_path (a Hub id or folder) or model_config (an inline config).")
        spec = self.model_config
        if isinstance(spec, str):
            try:
                spec = yaml.safe_load(spec)  # JSON is YAML too
            except yaml.YAMLError as error:
                raise RecipeError(f"model_config is neither JSON nor YAML: {_one_line(error)}.") from error
        if not isinstance(spec, dict | None):
            raise RecipeError(f"model_config must be a mapping (a JSON object), got {self.model_config!r}.")
        self.model_config = spec


CV_CHECKPOINTS = ("last", "inner")
"""What a cross-validation fold keeps: its last checkpoint, or the best on an inner split of its training images."""


@dataclass
class DataArguments:
    data_dir: str = field(
        default="data/siim-png",
        metadata={"help": "PNG layout root, a saved datasets folder, or a Hub dataset hf://datasets/ID[@REVISION]."},
    )
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
    cv_checkpoint: str = field(
        default="last",
        metadata={
            "help": "With num_folds, the checkpoint each fold keeps: 'last' (a fixed schedule; nothing is chosen on "
            "the fold's validation images, which the out-of-fold figures score) or 'inner' (the best by "
            "metric_for_best_model, with load_best_model_at_end, on an inner split of val_fraction of the fold's "
            "training images, patients kept together)."
        },
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
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise RecipeError(f"{key} must be at least 1 (or null for every row), got {getattr(self, key)}.")
        self.fold = str(self.fold)
        if self.cv_checkpoint not in CV_CHECKPOINTS:
            raise RecipeError(f"cv_checkpoint must be one of {CV_CHECKPOINTS}, got {self.cv_checkpoint!r}.")
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
            weights = weights.split(",")
        if weights in ("none", "null"):
            weights = None
        if isinstance(weights, (list, tuple)):
            try:
                weights = [float(w) for w in weights]
            except (TypeError, ValueError):
                raise RecipeError(
                    f"class_weights must be null, 'auto' or one number per class (a YAML list, or '0.5,54.2' on the "
                    f"command line), got {self.class_weights!r}."
                ) from None
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
    balance_classes: str | None = field(
        default=None,
        metadata={
            "help": "The classes balanced sampling balances (a YAML list, or 'nodule,mass' on the command line); "
            "null: every class. Single-label: an image is positive if it holds any of them. E.g. lung fields plus "
            "a rare finding: balance the finding, not the lungs every image holds."
        },
    )

    def __post_init__(self) -> None:
        names = self.balance_classes
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",") if name.strip()]
        valid = isinstance(names, list) and names and all(isinstance(name, str) for name in names)
        if names is not None and not valid:
            raise RecipeError(f"balance_classes must be null or a list of class names, got {self.balance_classes!r}.")
        self.balance_classes = names


@dataclass
class PrecisionArguments:
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 + TF32 on a CUDA GPU that supports bf16; with use_cpu, bf16 on a CPU with bf16 "
            "instructions; else fp32), bf16, fp16 or no. Sets TrainingArguments' "
            "bf16/fp16/tf32 unless the recipe sets those itself."
        },
    )
    channels_last: bool = field(
        default=False,
        metadata={
            "help": "Train with the network's weights in channels-last (NHWC) layout: faster convolutions on CPUs "
            "(1.17x per step for the demo recipe, BENCHMARKS.md); the weights are saved as usual."
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise RecipeError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}.")


PRECISIONS = ("auto", "bf16", "fp16", "no")


def precision_defaults(mixed_precision: str, use_cpu: bool = False) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16/tf32 for ``mixed_precision`` on this machine; ``use_cpu``: the recipe trains on
    the CPU (``use_cpu: true``). "auto" picks bf16 only where the hardware computes it natively
    (:func:`cpu_has_native_bf16` on the CPU): emulated bf16 is slower than fp32."""
    import torch

    cuda = torch.cuda.is_available() and not use_cpu
    if mixed_precision == "auto":
        # CPU bf16 only with use_cpu: TrainingArguments refuses bf16 on the CPU otherwise
        native = torch.cuda.is_bf16_supported() if cuda else use_cpu and cpu_has_native_bf16()
        mixed_precision = "bf16" if native else "no"
    return {"bf16": mixed_precision == "bf16", "fp16": mixed_precision == "fp16", "tf32": cuda}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), which oneDNN uses for bf16 matmuls and
    convolutions; without them torch emulates bf16, slower than fp32."""
    import torch

    # torch.cpu's checks are private; a torch without them counts as "no" (fp32, always correct).
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


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
    """The parsed arguments plus the flat mapping that reproduces them (``recipe.yaml``). notes: the settings the
    run changed (:meth:`override`), written as comments at the top of the saved recipe.

    hub_token: the recipe's ``hub_token``, kept here and out of ``training`` (whose ``hub_token`` is None): the
    Trainer pickles its arguments into ``training_args.bin`` in every checkpoint, and no secret may reach a file.
    Pass it explicitly to the Hub calls.
    """

    model: ModelArguments
    data: DataArguments
    loss: LossArguments
    sampling: SamplingArguments
    precision: PrecisionArguments
    training: TrainingArguments
    resolved: dict[str, Any]
    source: str | None
    hub_token: str | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def override(self, key: str, value: Any, why: str) -> None:
        """Change a setting that the data overrules (e.g. ``balanced_sampling`` with nothing to balance): in the
        arguments and in ``resolved``, so that the saved recipe reproduces what ran, with ``why`` as a comment."""
        for args in (self.model, self.data, self.loss, self.sampling, self.precision, self.training):
            if key in {f.name for f in dataclasses.fields(args)}:
                setattr(args, key, value)
        self.resolved[key] = _plain(value)
        shown = str(value).lower() if isinstance(value, bool) else value
        self.notes.append(f"{key}: {shown} ({why})")


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


NULL = "null"  # on the command line, unsets a key that accepts null in a recipe (YAML's null)


def _nullable_keys() -> set[str]:
    """The fields whose type admits None (``str | None``, ``int | None``, ...)."""
    keys = set()
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        keys.update(f.name for f in dataclasses.fields(cls) if f.init and type(None) in typing.get_args(hints[f.name]))
    return keys


def _or_null(convert: Any) -> Any:
    """argparse ``type`` that reads :data:`NULL` as None and anything else with ``convert``."""

    def parse(text: str) -> Any:
        return None if text == NULL else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its error messages
    return parse


class _RecipeParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line :class:`~cxrseg.errors.RecipeError` instead of the usage text, and
    where ``--key null`` sets None for every key whose type admits it (``--model_name_or_path null``,
    ``--save_total_limit null``), as ``key: null`` does in a recipe. Keys taking a list (``nargs``) keep their
    own reading."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nullable = _nullable_keys()
        for action in self._actions:
            if action.dest in nullable and action.nargs in (None, "?") and callable(action.type):
                action.type = _or_null(action.type)

    def error(self, message: str):
        raise RecipeError(f"{_one_line(message)} (on the command line; `python run_train.py --help` lists the keys).")


def _one_line(error: object) -> str:
    """The message of ``error`` on one line, without a final full stop; for YAML, the problem and where it is."""
    mark = getattr(error, "problem_mark", None)
    text = f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(error)
    return " ".join(text.split()).rstrip(".")


def _read_recipe_file(path: Path) -> dict[str, Any]:
    """The YAML mapping of the recipe at ``path``; :class:`~cxrseg.errors.RecipeError` naming the file (and line)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise RecipeError(f"Recipe {path} {what}: --config takes a YAML file (recipes live in recipe/).")
    try:
        with path.open() as handle:
            recipe = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"Recipe {path} cannot be read: {error}.") from error
    except yaml.YAMLError as error:  # its message holds the line and column
        raise RecipeError(f"Recipe {path} is not valid YAML: {_one_line(error)}") from error
    if not isinstance(recipe, dict | None):
        raise RecipeError(f"Recipe {path} must be a flat mapping of keys to values.")
    return recipe or {}


def _check_recipe_values(parser: HfArgumentParser, recipe: dict[str, Any], path: str) -> None:
    """Each YAML value must be what the command line would accept for its key: converted by the same argparse
    ``type`` (numbers, booleans) and within its ``choices``. Mappings and lists pass for text keys (e.g.
    ``model_config``, ``class_weights``), which their dataclass checks."""
    actions = {action.dest: action for action in parser._actions}  # argparse's list of the options it defines
    for key, value in recipe.items():
        action = actions[key]
        if value is None:
            if action.default is not None and action.type in (int, float, string_to_bool):
                raise RecipeError(f"{key} in {path} cannot be null: give a value, or leave the key out.")
            continue
        values = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
        for item in values:
            try:
                converted = action.type(item if isinstance(item, str) else str(item)) if action.type else item
                if action.choices is not None and converted not in action.choices:
                    raise ValueError(f"choose one of {', '.join(map(str, action.choices))}")
            except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
                kind = {int: "integer", float: "number", string_to_bool: "true or false"}.get(action.type, "value")
                raise RecipeError(f"{key} in {path}: {item!r} is not a valid {kind} ({_one_line(error)}).") from error


def parse_recipe(argv: list[str] | None = None) -> Recipe:
    """Parse ``--config FILE`` plus overrides (see module docstring). Raises :class:`~cxrseg.errors.RecipeError`
    naming the key and where it came from (the YAML file or the command line)."""
    try:
        return _parse_recipe(argv)
    except argparse.ArgumentError as error:  # a command-line value argparse cannot convert
        key = error.argument_name.split("/")[0]
        raise RecipeError(f"{key} on the command line: {_one_line(error.message)}.") from error


def _parse_recipe(argv: list[str] | None) -> Recipe:
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    recipe = _read_recipe_file(Path(known.config)) if known.config is not None else {}
    keys = _known_keys()
    for key in recipe:
        if key not in keys:
            raise RecipeError(f"Unknown key {key!r} in {known.config}. Known keys are the fields of {_class_names()}.")
    for key in _cli_keys(rest):
        if key not in keys and key not in ("help", "h"):
            raise RecipeError(
                f"Unknown key {key!r} on the command line. Known keys are the fields of {_class_names()}."
            )
    parser = _RecipeParser(ARGUMENT_CLASSES, allow_abbrev=False, exit_on_error=False)
    _check_recipe_values(parser, recipe, known.config)
    pre.add_argument("--mixed_precision", default=recipe.get("mixed_precision", "auto"))
    pre.add_argument("--use_cpu", default=recipe.get("use_cpu", False), nargs="?", const=True, type=_lenient_bool)
    asked = pre.parse_known_args(rest)[0]
    precision = precision_defaults(asked.mixed_precision, use_cpu=asked.use_cpu)
    parser.set_defaults(**{**RECIPE_DEFAULTS, **precision, **recipe})
    try:
        model, data, loss, sampling, precision_args, training = parser.parse_args_into_dataclasses(args=rest)
    except ValueError as error:  # TrainingArguments' own checks of settings that do not fit together
        raise RecipeError(f"{_one_line(error)} (from {known.config or 'the defaults'} + the command line)") from error
    hub_token, training.hub_token = training.hub_token, None
    _check_ranges((model, data, loss, sampling, training), known.config)
    explicit = set(RECIPE_DEFAULTS) | set(recipe) | set(_cli_keys(rest))
    resolved: dict[str, Any] = {}
    for args in (model, data, loss, sampling, precision_args):
        resolved.update({f.name: _plain(getattr(args, f.name)) for f in dataclasses.fields(args)})
    for f in dataclasses.fields(TrainingArguments):
        if f.name in explicit and f.name not in SECRET_KEYS:
            resolved[f.name] = _plain(getattr(training, f.name))
    return Recipe(model, data, loss, sampling, precision_args, training, resolved, known.config, hub_token)


def _lenient_bool(value: str) -> bool:
    """A command-line boolean for the pre-parser; a bad value counts as False here and the main parser reports it."""
    try:
        return string_to_bool(value)
    except argparse.ArgumentTypeError:  # anything but true/false/yes/no/1/0
        return False


def check_task_settings(recipe: Recipe, labels: LabelSet) -> None:
    """The recipe against the data's label set, before any work: a ``task`` it names must be the data's, and the
    settings that only one kind of label set uses are an error on the other. Raises :class:`RecipeError`."""
    task, sampling = recipe.model.task, recipe.sampling
    if task is not None and task != labels.task:
        raise RecipeError(
            f"The recipe's task is {task!r} but {recipe.data.data_dir} declares {labels.describe()} in its "
            "labels.json; remove `task` from the recipe or pass --task null (the data decides), or point data_dir at "
            "the intended data."
        )
    if labels.multilabel and (sampling.negative_keep_ratio, sampling.positive_weight) != (1.0, 1.0):
        raise RecipeError(
            f"negative_keep_ratio and positive_weight apply to single-label tasks; {labels.task} is multi-label and "
            "balances its classes with class_balance_power and empty_image_weight."
        )
    unknown = [name for name in sampling.balance_classes or () if name not in labels.foreground]
    if unknown:
        raise RecipeError(
            f"balance_classes names {unknown}, which are not classes of {labels.describe()}; give some of "
            f"{list(labels.foreground)}."
        )


def _positive(value) -> bool:
    return value > 0


def _non_negative(value) -> bool:
    return value >= 0


def _fraction(value) -> bool:
    return 0 <= value <= 1


def _seed(value) -> bool:
    return 0 <= value < 2**32  # numpy's seeds; set_seed seeds numpy


def _one_or_more(value) -> bool:
    return value >= 1


VALUE_RANGES: dict[str, tuple[Any, str]] = {
    # key: (test of a value that is not None, what a valid value is)
    "image_size": (_one_or_more, "at least 1 (pixels)"),
    "split_seed": (_seed, "an integer in [0, 2**32)"),
    "preprocessing_num_workers": (_one_or_more, "at least 1"),
    "demo_num_images": (_one_or_more, "at least 1"),
    "lambda_ce": (_non_negative, ">= 0"),
    "lambda_dice": (_non_negative, ">= 0"),
    "dice_smooth": (_non_negative, ">= 0"),
    "max_pos_weight": (_positive, "> 0"),
    "auxiliary_loss_weight": (_non_negative, ">= 0"),
    "negative_keep_ratio": (_fraction, "in [0, 1]: the fraction of negatives kept each epoch"),
    "positive_weight": (_positive, "> 0"),
    "class_balance_power": (_non_negative, ">= 0"),
    "empty_image_weight": (_non_negative, ">= 0"),
    "learning_rate": (_positive, "> 0"),
    "weight_decay": (_non_negative, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_epsilon": (_positive, "> 0"),
    "max_grad_norm": (_non_negative, ">= 0"),
    "num_train_epochs": (_positive, "> 0"),
    "warmup_steps": (_non_negative, ">= 0"),
    "per_device_train_batch_size": (_one_or_more, "at least 1"),
    "per_device_eval_batch_size": (_one_or_more, "at least 1"),
    "gradient_accumulation_steps": (_one_or_more, "at least 1"),
    "seed": (_seed, "an integer in [0, 2**32)"),
    "data_seed": (_seed, "an integer in [0, 2**32)"),
    "dataloader_num_workers": (_non_negative, ">= 0"),
    "logging_steps": (_positive, "> 0"),
    "save_total_limit": (_one_or_more, "at least 1 (or null to keep every checkpoint)"),
}
"""The ranges :func:`parse_recipe` checks before anything runs: values that only torch, numpy or the Trainer would
reject later (a negative learning rate, a batch size of 0, a negative seed), and values that would train nonsense."""


def _check_ranges(arguments: tuple, source: str | None) -> None:
    """Raise :class:`~cxrseg.errors.RecipeError` naming the first key of :data:`VALUE_RANGES` whose value is out of
    range or not a finite number, and where the recipe came from."""
    where = f"{source} + the command line" if source else "the command line"
    for args in arguments:
        for f in dataclasses.fields(args):
            if f.name not in VALUE_RANGES or getattr(args, f.name, None) is None:
                continue
            value = getattr(args, f.name)
            test, valid = VALUE_RANGES[f.name]
            if isinstance(value, float) and not math.isfinite(value) or not test(value):
                raise RecipeError(f"{f.name} must be {valid}, got {value} (from {where}).")
    loss = next(args for args in arguments if isinstance(args, LossArguments))
    if loss.lambda_ce == 0 and loss.lambda_dice == 0:
        raise RecipeError(f"lambda_ce and lambda_dice are both 0: nothing would be trained (from {where}).")
    weights = loss.class_weights
    if isinstance(weights, list) and not all(math.isfinite(w) and w >= 0 for w in weights):
        raise RecipeError(f"class_weights must be finite numbers >= 0, got {weights} (from {where}).")


def _class_names() -> str:
    return ", ".join(cls.__name__ for cls in ARGUMENT_CLASSES)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe as YAML (atomically); reloading it with ``--config`` reproduces the run."""
    path = Path(path)
    header = f"# Resolved recipe (from {Path(recipe.source).name if recipe.source else 'defaults'} + overrides)\n"
    header += "".join(f"# Set by the run: {note}\n" for note in recipe.notes)
    atomic_write_text(path, header + yaml.safe_dump(recipe.resolved, sort_keys=False))
