"""The output folder as a Hub model repo: our model card, copies without secrets or local paths, and the push.

The card (:func:`model_card`) is the Jinja template ``templates/model_card.md`` of this package, rendered by
``huggingface_hub.ModelCard.from_template`` with the values :func:`card_values` reads from the output folder.

What is uploaded (:func:`upload_plan`): the top-level files of the output folder whose suffix is in
:data:`UPLOAD_SUFFIXES` — ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, ``postprocess.json``,
``recipe.yaml``, ``README.md`` (the card), ``splits.json``, ``*_results.json``, ``trainer_state.json``, plots — and
never a subfolder (``checkpoint-N/``, ``runs/``, ``wandb/``) nor ``training_args.bin`` (a pickle holding local paths
and, when set, the Hub token). Text files are uploaded as redacted copies (the local files stay as they are):
absolute paths in ``recipe.yaml`` become relative to the working directory, or only their last component when
outside it; the output folder, working directory and home directory are cut out of every text file; a token that
somehow reached a file is replaced. The push is one commit through ``HfApi`` (``create_repo`` + ``create_commit``);
the transformers Trainer's own push is not used (it would upload checkpoints and write its own card).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalTokenNotFoundError

from cxrseg.errors import HubAccessError, ModelLoadError
from cxrseg.files import atomic_write_text
from cxrseg.labels import labels_from_config
from cxrseg.postprocess import POSTPROCESS_FILENAME

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".json", ".safetensors", ".yaml", ".md", ".png")
TEXT_SUFFIXES = (".json", ".yaml", ".md")
CARD_FILENAME = "README.md"
RECIPE_FILENAME = "recipe.yaml"
REDACTED = "<redacted>"


# ---------------------------------------------------------------------------------------------------- start-up check
def check_hub_access(repo_id: str | None, token: str | None = None) -> str:
    """Check, before training, that ``repo_id`` can be pushed to; returns the full ``namespace/name`` id.

    One ``whoami`` call: it fails without network, without a token, or with an invalid one. The namespace must be
    the token's user or one of its organisations, and the token must not be read-only.
    Raises :class:`HubAccessError` with what to do.
    """
    if not repo_id:
        raise HubAccessError("push_to_hub is set but hub_model_id is empty: set hub_model_id: <user>/<model-name>.")
    if hub_constants.HF_HUB_OFFLINE:
        raise HubAccessError(
            "push_to_hub is set but HF_HUB_OFFLINE=1: unset it, or set push_to_hub: false and push the output folder "
            "later with `cxrseg push --model OUTPUT_DIR --repo-id ID`."
        )
    try:
        me = HfApi(token=token).whoami()
    except LocalTokenNotFoundError as error:
        raise HubAccessError(
            "push_to_hub is set but no Hugging Face token was found: run `hf auth login` or set HF_TOKEN."
        ) from error
    except Exception as error:  # any network or HTTP failure: the push at the end would fail too
        raise HubAccessError(
            f"push_to_hub is set but the Hugging Face Hub cannot be reached or refused the token "
            f"({type(error).__name__}: {error}). Check the network and the token (`hf auth whoami`), or set "
            "push_to_hub: false and push later with `cxrseg push`."
        ) from error
    user = me.get("name")
    namespaces = {user, *(org.get("name") for org in me.get("orgs", []))}
    namespace, _, name = repo_id.rpartition("/")
    full_id = repo_id if namespace else f"{user}/{name}"
    if namespace and namespace not in namespaces:
        raise HubAccessError(
            f"hub_model_id {repo_id!r}: the token belongs to {user!r}, who cannot write to {namespace!r} "
            f"(namespaces: {sorted(n for n in namespaces if n)})."
        )
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubAccessError(f"The Hugging Face token of {user!r} is read-only; use a token with write access.")
    return full_id


# ---------------------------------------------------------------------------------------------------- redaction
def shareable_recipe(resolved: dict[str, Any], base: str | os.PathLike | None = None) -> tuple[dict[str, Any], list]:
    """A copy of a resolved recipe without local absolute paths, and the keys that were rewritten.

    Absolute paths (and ``~/...``) become relative to ``base`` (the working directory by default) when inside it,
    else only their last component. ``hub_token`` is dropped.
    """
    base = Path(base or Path.cwd()).resolve()
    shared, rewritten = {}, []
    for key, value in resolved.items():
        if key == "hub_token":
            continue
        new = [_relative(v, base) for v in value] if isinstance(value, list) else _relative(value, base)
        if new != value:
            rewritten.append(key)
        shared[key] = new
    return shared, rewritten


def _shareable_recipe_text(text: str) -> str:
    """The text of a ``recipe.yaml`` as shared: :func:`shareable_recipe` of it, keeping its first comment line and
    adding one that names the keys rewritten."""
    shared, rewritten = shareable_recipe(yaml.safe_load(text) or {})
    header = text.splitlines()[0] + "\n" if text.startswith("#") else ""
    if rewritten:
        header += f"# Local paths made relative or cut to their last part for sharing: {', '.join(rewritten)}\n"
    return header + yaml.safe_dump(shared, sort_keys=False)


def _relative(value: Any, base: Path) -> Any:
    """``value`` relative to ``base`` if it is an absolute path inside it, its last component if outside, else as is."""
    if not isinstance(value, str) or not os.path.isabs(os.path.expanduser(value)):
        return value
    path = Path(os.path.expanduser(value)).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def _local_prefixes(folder: Path) -> list[tuple[str, str]]:
    """(local prefix, replacement), longest first: the output folder, the working directory, the home directory."""
    pairs = {}
    for path, replacement in ((Path.home(), "~"), (Path.cwd(), "."), (folder, ".")):
        for variant in {str(path), str(path.resolve())}:
            if len(Path(variant).parts) > 1:  # never "/" itself
                pairs[variant] = replacement
    return sorted(pairs.items(), key=lambda item: -len(item[0]))


def redact_text(text: str, folder: str | os.PathLike, token: str | None = None) -> str:
    """``text`` with the local prefixes of :func:`_local_prefixes` cut out and ``token`` replaced."""
    for prefix, replacement in _local_prefixes(Path(folder)):
        # Only whole path components: "/tmp/out" must not match inside "/tmp/out2".
        pattern = re.compile(re.escape(prefix) + r"(/|(?![\w.-]))")
        text = pattern.sub(lambda m, r=replacement: (r + "/" if r != "." else "") if m.group(1) else r, text)
    if token:
        text = text.replace(token, REDACTED)
    return text


# ---------------------------------------------------------------------------------------------------- model card
CARD_TEMPLATE = "templates/model_card.md"  # Jinja, inside the cxrseg package; rendered by ModelCard.from_template
CARD_TAGS = ("medical-imaging", "chest-x-ray", "semantic-segmentation", "upernet", "swin", "cxrseg")
METRIC_DEFINITIONS = {  # eval_<name> in all_results.json → what the card says it is, in the card's order
    "dice": "Dice of all validation pixels pooled, 2TP / (2TP + FP + FN)",
    "kaggle_dice": "mean per-image Dice, 1 when truth and prediction are both empty (SIIM-ACR rule)",
    "iou": "pooled IoU, TP / (TP + FP + FN)",
    "ap": "pixel average precision (sklearn's step sum)",
    "best_f1": "best pixel F1 over thresholds",
    "best_threshold": "probability threshold that gives best_f1",
    "num_images": "validation images",
}
CLASS_METRICS = ("dice", "kaggle_dice", "ap")  # the per-class table of multi-label models: eval_<metric>/<class>
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


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _format(value: Any, count: bool = False) -> str:
    """A metric with 4 decimals ("n/a" for NaN); a count (``num_*``) as an integer."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return str(int(value)) if count else f"{value:.4f}"


def is_hub_id(value: Any) -> bool:
    """Whether ``value`` names a Hub repo (``namespace/name``, not an existing local path)."""
    return isinstance(value, str) and not os.path.exists(value) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None


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
    :data:`CLASS_METRICS`]) for every foreground class. ``repo_id`` is the card's title and the id in its loading
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
    labels = labels_from_config(config["id2label"])
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
    base_model = recipe.get("model_name_or_path")
    return {
        "title": repo_id.split("/")[-1] if repo_id else f"cxrseg {labels.task} model",
        "model_id": repo_id or "path/to/this/folder",
        "task": labels.task,
        "multilabel": labels.multilabel,
        "id2label": labels.id2label,
        "synthetic": bool(recipe.get("generate_demo_data")),
        "dataset_name": dataset_name,
        "dataset_url": dataset_url,
        "citations": citations,
        "image_size": recipe.get("image_size") or config.get("backbone_config", {}).get("image_size"),
        "hub_base_model": base_model if is_hub_id(base_model) else None,
        "from_scratch": base_model is None,
        "checkpoint_step": state.get("global_step"),
        "metrics": _metric_rows(results),
        "class_metrics": _class_rows(results, labels.foreground),
        "postprocess": _read_json(folder / POSTPROCESS_FILENAME),
        "postprocess_filename": POSTPROCESS_FILENAME,
        "recipe_filename": RECIPE_FILENAME,
        "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False).rstrip(),
    }


def model_card(
    folder: str | os.PathLike, repo_id: str | None = None, checkpoint: str | os.PathLike | None = None
) -> str:
    """The model card (``README.md``) of an output folder (or of its ``checkpoint``, see :func:`card_values`):
    :data:`CARD_TEMPLATE` filled with :func:`card_values`.

    Its metadata: library transformers, pipeline image-segmentation, :data:`CARD_TAGS` and the task, and the base
    model when it is a Hub id.
    """
    values = card_values(folder, repo_id, checkpoint)
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=[*CARD_TAGS, values["task"]],
        base_model=values["hub_base_model"],
    )
    return str(ModelCard.from_template(metadata, template_str=card_template(), **values))


def card_template() -> str:
    """The text of :data:`CARD_TEMPLATE`, through importlib.resources so that it also loads from a wheel or zip."""
    return resources.files("cxrseg").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Write :func:`model_card` to ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_FILENAME
    return atomic_write_text(path, model_card(folder, repo_id))


# ---------------------------------------------------------------------------------------------------- push
def upload_plan(folder: str | os.PathLike, token: str | None = None) -> dict[str, bytes | Path]:
    """What a push uploads: path in the repo → bytes (redacted text) or the local file (binary). See module doc."""
    folder = Path(folder)
    return {
        path.name: shared_file(path, folder, token)
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix in UPLOAD_SUFFIXES
    }


def shared_file(path: Path, folder: Path, token: str | None = None) -> bytes | Path:
    """What is uploaded of ``path``: a text file (:data:`TEXT_SUFFIXES`) as redacted bytes (:func:`redact_text`
    with ``folder``, the output folder; ``recipe.yaml`` as :func:`shareable_recipe`), any other file as it is."""
    if path.suffix not in TEXT_SUFFIXES:
        return path
    text = path.read_text()
    if path.name == RECIPE_FILENAME:
        text = _shareable_recipe_text(text)
    return redact_text(text, folder, token).encode()


def check_model_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path if it holds a saved model (``config.json`` and ``*.safetensors``), else
    :class:`~cxrseg.errors.ModelLoadError`."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} has no config.json and *.safetensors: not a saved model folder.")
    return folder


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload cxrseg model",
) -> str:
    """Write the model card for ``repo_id`` into ``folder``, then upload :func:`upload_plan` as one commit.

    Creates the repo if needed (``private`` applies only then). Returns the commit URL.
    """
    folder = check_model_folder(folder)
    write_model_card(folder, repo_id)
    plan = upload_plan(folder, token)
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in plan.items()]
    logger.info("Pushing %d files to https://huggingface.co/%s: %s", len(plan), repo_id, ", ".join(plan))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    except Exception as error:  # the network or the Hub failed: the local folder is complete, say how to retry
        raise HubAccessError(
            f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). The output folder is complete; retry "
            f"with `cxrseg push --model OUTPUT_DIR --repo-id {repo_id}`."
        ) from error
    return getattr(commit, "commit_url", str(commit))
