"""The model card: the Jinja template ``templates/model_card.md`` of this package, rendered by
``huggingface_hub.ModelCard.from_template`` with the values :func:`card_values` reads from an output folder."""

from __future__ import annotations

import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from cxrseg.constants import CARD_FILENAME, CV_FILENAME, POSTPROCESS_FILENAME, RECIPE_FILENAME
from cxrseg.errors import ModelLoadError
from cxrseg.files import atomic_write_text
from cxrseg.hub.access import hub_dataset_id, is_hub_id
from cxrseg.hub.redaction import shareable_recipe
from cxrseg.labels import labels_from_config

logger = logging.getLogger(__name__)


CARD_TEMPLATE = "templates/model_card.md"  # Jinja, inside the cxrseg.hub package; rendered by ModelCard.from_template
CARD_TAGS = ("medical-imaging", "chest-x-ray", "semantic-segmentation", "upernet", "swin", "cxrseg")
METRIC_DEFINITIONS = {  # eval_<name> in all_results.json → what the card says it is, in the card's order
    "dice": "Dice of all validation pixels pooled, 2TP / (2TP + FP + FN)",
    "kaggle_dice": "mean per-image Dice, 1 when truth and prediction are both empty (SIIM-ACR rule)",
    "iou": "pooled IoU, TP / (TP + FP + FN)",
    "ap": "pixel average precision (sklearn's step sum)",
    "best_f1": "best pixel F1 over thresholds",
    "best_threshold": "probability threshold that gives best_f1",
    "num_images": "validation images",
    "prior_mask_dice": "baseline: dice of the training set's mean mask at 0.5, the same fixed mask for every image",
    "prior_mask_kaggle_dice": "baseline: kaggle_dice of that prior mask",
    "empty_mask_kaggle_dice": "baseline: kaggle_dice of predicting nothing (the share of images without the class)",
}
CLASS_METRICS = ("dice", "prior_mask_dice", "kaggle_dice", "prior_mask_kaggle_dice", "ap")
"""The per-class table of a model with several classes: ``eval_<metric>/<class>``."""
SIIM_CITATION = """@misc{siim-acr-pneumothorax-2019,
  title = {{SIIM-ACR} Pneumothorax Segmentation},
  author = {{Society for Imaging Informatics in Medicine} and {American College of Radiology}},
  year = {2019},
  howpublished = {\\url{https://www.kaggle.com/competitions/siim-acr-pneumothorax-segmentation}}
}"""
CHESTXDET_CITATION = """@article{lian2021sarnet,
  title = {A Structure-Aware Relation Network for Thoracic Diseases Detection and Segmentation},
  author = {Lian, Jie and Liu, Jingyu and Zhang, Shu and Gao, Kai and Liu, Xiaoqing and Zhang, Dingwen and Yu, Yizhou},
  journal = {IEEE Transactions on Medical Imaging},
  volume = {40},
  number = {8},
  pages = {2042--2052},
  year = {2021},
  eprint = {2104.10326},
  archivePrefix = {arXiv}
}"""
NIH_CITATION = """@inproceedings{wang2017chestxray,
  title = {{ChestX-ray8}: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and
           Localization of Common Thorax Diseases},
  author = {Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {3462--3471},
  year = {2017}
}"""
# model-index (the Hub's evaluation results): each card metric → (metric type, readable name). Counts and the
# threshold are settings, not results, and stay out.
INDEX_METRICS = {
    "dice": ("dice", "Dice (pooled pixels)"),
    "kaggle_dice": ("dice", "Mean per-image Dice (SIIM-ACR rule)"),
    "iou": ("iou", "IoU (pooled pixels)"),
    "ap": ("average_precision", "Pixel average precision"),
    "best_f1": ("f1", "Best pixel F1"),
}
TASK_TYPE = "image-segmentation"  # the Hub's task id, also the pipeline tag
VALIDATION_SPLIT = "validation"  # the held-out split of splits.json, named as datasets names it
OUT_OF_FOLD_SPLIT = "out-of-fold"  # every image of a CV folder, each scored by the fold model that never trained on it
# The card's license (the Hub's `license`): cxrseg's own for models trained on its synthetic data; "other" pointing
# at the data's terms for models trained on a public dataset (review them before sharing), and for custom data.
SYNTHETIC_LICENSE = "apache-2.0"
DATA_LICENSES = {  # task → (license_name, license_link) of a `license: other`
    "pneumothorax": (
        "siim-acr-pneumothorax-data-terms",
        "https://www.kaggle.com/competitions/siim-acr-pneumothorax-segmentation/rules",
    ),
    "chestxdet": ("chestx-det-data-terms", "https://github.com/Deepwise-AILab/ChestX-Det-Dataset"),
}
CUSTOM_DATA_LICENSE = ("training-data-terms", None)
DATASETS = {  # task → (dataset name, its page, what to cite); other tasks: "custom data"
    "pneumothorax": (
        "SIIM-ACR Pneumothorax Segmentation",
        "https://www.kaggle.com/competitions/siim-acr-pneumothorax-segmentation",
        (SIIM_CITATION, NIH_CITATION),
    ),
    "chestxdet": (
        "ChestX-Det",
        "https://github.com/Deepwise-AILab/ChestX-Det-Dataset",
        (CHESTXDET_CITATION, NIH_CITATION),
    ),
}


DATASET_TYPES = {"pneumothorax": "siim-acr-pneumothorax", "chestxdet": "chestx-det"}  # model-index dataset ids
SYNTHETIC_DATASET = ("cxrseg synthetic demo data", "cxrseg-synthetic")  # (name, type) of generate_demo_data runs


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _format(value: Any, count: bool = False) -> str:
    """A metric with 4 decimals ("n/a" for NaN); a count (``num_*``) as an integer."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return str(int(value)) if count else f"{value:.4f}"


def _metric_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, formatted value, definition) of each :data:`METRIC_DEFINITIONS` metric (``eval_<name>``) in results."""
    return [
        (name, _format(results[f"eval_{name}"], count=name.startswith("num_")), definition)
        for name, definition in METRIC_DEFINITIONS.items()
        if f"eval_{name}" in results
    ]


def _class_rows(results: dict[str, Any], classes: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(class, formatted values of :data:`CLASS_METRICS`) for each class; "n/a" where ``results`` lacks one."""
    return [
        (name, [_format(results.get(f"eval_{metric}/{name}", float("nan"))) for metric in CLASS_METRICS])
        for name in classes
    ]


def card_values(
    folder: str | os.PathLike, repo_id: str | None = None, checkpoint: str | os.PathLike | None = None
) -> dict[str, Any]:
    """What the card template shows, read from an output folder (see :data:`CARD_TEMPLATE` for how it is shown).

    Reads ``config.json`` (labels), ``recipe.yaml`` (shared as by :func:`shareable_recipe`), ``all_results.json``
    (or ``eval_results.json``) and ``postprocess.json`` when present. Metrics are strings, already formatted:
    ``metrics`` holds (name, value, definition) for each result present, ``class_metrics`` (class, [values of
    :data:`CLASS_METRICS`]) for every foreground class; ``classes`` names them (the user's own names, from the
    model's ``config.json``). ``repo_id`` is the card's title and the id in its loading
    code (a placeholder when None). With ``checkpoint`` (a ``checkpoint-N`` folder, during training), the model's
    ``config.json`` and the metrics (the last evaluation in its ``trainer_state.json``) come from there, and
    ``checkpoint_step`` is N.
    """
    folder = Path(folder)
    model_folder = Path(checkpoint) if checkpoint is not None else folder
    config = _read_json(model_folder / "config.json")
    if "id2label" not in config:
        raise ModelLoadError(
            f"{model_folder / 'config.json'} with id2label is missing: is {model_folder} an output folder?"
        )
    labels = labels_from_config(config)
    recipe_path = folder / RECIPE_FILENAME
    resolved = yaml.safe_load(recipe_path.read_text()) if recipe_path.is_file() else None
    recipe, _ = shareable_recipe(resolved or {})
    state = _read_json(model_folder / "trainer_state.json") if checkpoint is not None else {}
    if checkpoint is not None:
        evaluations = [entry for entry in state.get("log_history", []) if "eval_loss" in entry]
        results = evaluations[-1] if evaluations else {}
    else:
        results = _read_json(folder / "all_results.json") or _read_json(folder / "eval_results.json")
    dataset_name, dataset_url, citations = DATASETS.get(labels.task, ("custom data", None, ()))
    dataset = _dataset(recipe, labels.task)
    if dataset["hub_id"]:
        dataset_name, dataset_url = dataset["hub_id"], f"https://huggingface.co/datasets/{dataset['hub_id']}"
    base_model = recipe.get("model_name_or_path")
    out_of_fold = _out_of_fold_results(folder)
    index = [
        *index_results(results, labels, dataset, VALIDATION_SPLIT, prefix="eval_"),
        *index_results(out_of_fold, labels, dataset, OUT_OF_FOLD_SPLIT, prefix=""),
    ]
    return {
        "title": repo_id.split("/")[-1] if repo_id else f"cxrseg {labels.task} model",
        "model_id": repo_id or "path/to/this/folder",
        "task": labels.task,
        "classes": list(labels.foreground),
        "multilabel": labels.multilabel,
        "id2label": labels.id2label,
        "synthetic": dataset["type"] == SYNTHETIC_DATASET[1],
        "dataset_name": dataset_name,
        "dataset_url": dataset_url,
        "citations": citations,
        "image_size": recipe.get("image_size") or config.get("backbone_config", {}).get("image_size"),
        "hub_base_model": base_model if is_hub_id(base_model) else None,
        "from_scratch": base_model is None,
        "checkpoint_step": state.get("global_step"),
        "dataset": dataset,
        "license": _license(labels.task, dataset),
        "eval_results": index,
        "out_of_fold": [
            (r.metric_name, _format(r.metric_value)) for r in index if r.dataset_split == OUT_OF_FOLD_SPLIT
        ],
        "num_folds": _read_json(folder.resolve().parent / CV_FILENAME).get("num_folds") if out_of_fold else None,
        "metrics": _metric_rows(results),
        "class_metrics": _class_rows(results, labels.foreground),
        "postprocess": _read_json(folder / POSTPROCESS_FILENAME),
        "postprocess_filename": POSTPROCESS_FILENAME,
        "recipe_filename": RECIPE_FILENAME,
        "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False).rstrip(),
    }


def _dataset(recipe: dict[str, Any], task: str) -> dict[str, Any]:
    """The training data as the card's metadata names it: ``name`` and ``type`` (the model-index dataset id: the
    Hub dataset id when ``data_dir`` is ``hf://datasets/ID[@REVISION]``, else :data:`DATASET_TYPES`' slug),
    ``hub_id`` and ``revision``."""
    hub = hub_dataset_id(recipe.get("data_dir"))
    if hub is not None:  # read from the Hub: generate_demo_data does not apply
        return {"name": hub[0], "type": hub[0], "hub_id": hub[0], "revision": hub[1]}
    if recipe.get("generate_demo_data"):
        name, kind = SYNTHETIC_DATASET
        return {"name": name, "type": kind, "hub_id": None, "revision": None}
    name = DATASETS.get(task, ("custom data",))[0]
    return {"name": name, "type": DATASET_TYPES.get(task, "custom"), "hub_id": None, "revision": None}


def training_data(folder: str | os.PathLike) -> str | None:
    """What the model in ``folder`` was trained on, in words, from its ``recipe.yaml`` (as its card says it); None
    when the folder holds no recipe (a model cxrseg did not train, or one downloaded without it)."""
    path = Path(folder) / RECIPE_FILENAME
    if not path.is_file():
        return None
    recipe = yaml.safe_load(path.read_text()) or {}
    config = _read_json(Path(folder) / "config.json")
    task = recipe.get("task") or (labels_from_config(config).task if config.get("id2label") else "pneumothorax")
    dataset = _dataset(recipe, task)  # a recipe need not name its task: the model's config holds the data's
    if dataset["type"] == SYNTHETIC_DATASET[1]:
        return "cxrseg's synthetic demo images (drawn radiograph-like pictures, not real X-rays)"
    if dataset["hub_id"]:
        return f"the Hub dataset {dataset['hub_id']}" + (f" at {dataset['revision']}" if dataset["revision"] else "")
    return dataset["name"]


def _license(task: str, dataset: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link) of the card (see :data:`DATA_LICENSES`)."""
    if dataset["type"] == SYNTHETIC_DATASET[1]:
        return SYNTHETIC_LICENSE, None, None
    return ("other", *DATA_LICENSES.get(task, CUSTOM_DATA_LICENSE))


def _out_of_fold_results(folder: Path) -> dict[str, Any]:
    """The out-of-fold metrics of the CV folder that holds ``folder`` (a fold's or an averaged model's folder):
    ``evaluation/val/metrics.json`` of ``cxrseg evaluate --model CV_FOLDER``; empty elsewhere."""
    root = folder.resolve().parent
    if not (root / CV_FILENAME).is_file():
        return {}
    return _read_json(root / "evaluation" / "val" / "metrics.json")


def index_results(
    results: dict[str, Any], labels: Any, dataset: dict[str, Any], split: str, prefix: str = "eval_"
) -> list[EvalResult]:
    """The model-index entries (``huggingface_hub.EvalResult``) of ``results``: each :data:`INDEX_METRICS` metric
    found as ``<prefix><metric>`` (all classes pooled), and for multi-label models each ``<prefix><metric>/<class>``
    with the class as ``metric_config``. NaN and missing values are left out (the model-index holds numbers)."""
    entries = []
    task_name = f"{labels.task} segmentation"
    for metric, (metric_type, metric_name) in INDEX_METRICS.items():
        keys = [(f"{prefix}{metric}", None)]
        if labels.multilabel:
            keys += [(f"{prefix}{metric}/{name}", name) for name in labels.foreground]
        for key, name in keys:
            value = results.get(key)
            if not isinstance(value, int | float) or math.isnan(value):
                continue
            entries.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=task_name,
                    dataset_type=dataset["type"],
                    dataset_name=dataset["name"],
                    dataset_split=split,
                    dataset_revision=dataset["revision"],
                    metric_type=metric_type,
                    metric_name=f"{metric_name}, {name}" if name else metric_name,
                    metric_config=name,
                    metric_value=round(float(value), 4),
                )
            )
    return entries


def model_card(
    folder: str | os.PathLike, repo_id: str | None = None, checkpoint: str | os.PathLike | None = None
) -> str:
    """The model card (``README.md``) of an output folder (or of its ``checkpoint``, see :func:`card_values`):
    :data:`CARD_TEMPLATE` filled with :func:`card_values`.

    Its metadata (the Hub's model card spec, read back by ``huggingface_hub.ModelCard.load``): library transformers,
    pipeline image-segmentation, :data:`CARD_TAGS` and the task, the license (:data:`DATA_LICENSES`), the base model
    when it is a Hub id, the training dataset when it is a Hub dataset, and ``model-index``: the validation results
    (:func:`index_results`) and, for a fold of a cross-validation folder, the out-of-fold results of its folds.
    """
    values = card_values(folder, repo_id, checkpoint)
    license_id, license_name, license_link = values["license"]
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        tags=[*CARD_TAGS, values["task"]],
        base_model=values["hub_base_model"],
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        datasets=[values["dataset"]["hub_id"]] if values["dataset"]["hub_id"] else None,
        model_name=values["title"],
        eval_results=values["eval_results"] or None,
    )
    return str(ModelCard.from_template(metadata, template_str=card_template(), **values))


def card_template() -> str:
    """The text of :data:`CARD_TEMPLATE`, through importlib.resources so that it also loads from a wheel or zip."""
    return resources.files("cxrseg.hub").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Write :func:`model_card` to ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_FILENAME
    return atomic_write_text(path, model_card(folder, repo_id))
