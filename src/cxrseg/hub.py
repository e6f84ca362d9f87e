"""The output folder as a Hub model repo: our model card, copies without secrets or local paths, and the push.

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
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCardData
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
DATASETS = {
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


def _relative(value: Any, base: Path) -> Any:
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
def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _format(value: Any, count: bool = False) -> str:
    """A metric with 4 decimals ("n/a" for NaN); a count (``num_*``) as an integer."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return str(int(value)) if count else f"{value:.4f}"


def _is_hub_id(value: Any) -> bool:
    return isinstance(value, str) and not os.path.exists(value) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None


def model_card(folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """The model card (``README.md``) of an output folder: task, data, metrics, recipe, use, limits, citations.

    Reads ``config.json`` (labels), ``recipe.yaml``, ``all_results.json`` (or ``eval_results.json``) and
    ``postprocess.json`` when present. ``repo_id`` appears in the loading code (a placeholder when None).
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if "id2label" not in config:
        raise ModelLoadError(f"{folder / 'config.json'} with id2label is missing: is {folder} an output folder?")
    labels = labels_from_config(config["id2label"])
    recipe_path = folder / RECIPE_FILENAME
    recipe = yaml.safe_load(recipe_path.read_text()) if recipe_path.is_file() else {}
    recipe, _ = shareable_recipe(recipe or {})
    results = _read_json(folder / "all_results.json") or _read_json(folder / "eval_results.json")
    postprocess = _read_json(folder / POSTPROCESS_FILENAME)
    model_id = repo_id or "path/to/this/folder"
    synthetic = bool(recipe.get("generate_demo_data"))
    dataset_name, dataset_url, citations = DATASETS.get(labels.task, ("custom data", None, ()))
    base_model = recipe.get("model_name_or_path")

    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["medical-imaging", "chest-x-ray", "semantic-segmentation", "upernet", "swin", "cxrseg", labels.task],
        base_model=base_model if _is_hub_id(base_model) else None,
    )
    title = repo_id.split("/")[-1] if repo_id else f"cxrseg {labels.task} model"
    data_line = (
        "the synthetic demo dataset of `cxrseg.synthetic` (drawn radiograph-like images, **not real X-rays**)"
        if synthetic
        else f"[{dataset_name}]({dataset_url})"
        if dataset_url
        else dataset_name
    )
    image_size = recipe.get("image_size") or config.get("backbone_config", {}).get("image_size")
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {title}",
        "",
        f"UperNet with a Swin backbone for **{labels.task}** segmentation on chest radiographs, trained with "
        f"cxrseg on {data_line}.",
        "",
        f"- Outputs ({'one sigmoid per class, multi-label' if labels.multilabel else 'softmax'}): "
        + ", ".join(f"`{i}: {n}`" for i, n in labels.id2label.items()),
        f"- Input: a grayscale chest radiograph (PA/AP), resized to {image_size}×{image_size}, replicated to 3 "
        "channels and ImageNet-normalised by the bundled image processor.",
        f"- Base model: `{base_model}`"
        if _is_hub_id(base_model)
        else "- Trained from scratch (no pretrained weights)."
        if base_model is None
        else "- Initialised from a local model folder.",
        "",
        "## Evaluation",
        "",
        "On the validation split (`splits.json`, natural prevalence); pixels scored at probability ≥ 0.5.",
        "",
        "| metric | value | definition |",
        "| --- | --- | --- |",
    ]
    rows = [
        ("dice", "Dice of all validation pixels pooled, 2TP / (2TP + FP + FN)"),
        ("kaggle_dice", "mean per-image Dice, 1 when truth and prediction are both empty (SIIM-ACR rule)"),
        ("iou", "pooled IoU, TP / (TP + FP + FN)"),
        ("ap", "pixel average precision (sklearn's step sum)"),
        ("best_f1", "best pixel F1 over thresholds"),
        ("best_threshold", "probability threshold that gives best_f1"),
        ("num_images", "validation images"),
    ]
    found = False
    for key, definition in rows:
        if f"eval_{key}" in results:
            lines.append(f"| {key} | {_format(results[f'eval_{key}'], key.startswith('num_'))} | {definition} |")
            found = True
    if not found:
        lines.append("| (no evaluation results in this folder) | | |")
    if labels.multilabel:
        lines += ["", "| class | dice | kaggle_dice | ap |", "| --- | --- | --- | --- |"]
        for name in labels.foreground:
            values = [_format(results.get(f"eval_{m}/{name}", float("nan"))) for m in ("dice", "kaggle_dice", "ap")]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
    if postprocess:
        lines += [
            "",
            f"Post-processing (`{POSTPROCESS_FILENAME}`, the SIIM-ACR winners' triplet rule): keep an image's mask "
            f"only if at least {postprocess.get('min_area')} pixels (at {postprocess.get('image_size')} px) reach "
            f"{postprocess.get('top_threshold')}, then binarise at {postprocess.get('bottom_threshold')}.",
        ]
    lines += ["", "## How to use", "", "```python"]
    if labels.multilabel:
        lines += [
            "import torch",
            "from PIL import Image",
            "from transformers import AutoImageProcessor, UperNetForSemanticSegmentation",
            "",
            f'model = UperNetForSemanticSegmentation.from_pretrained("{model_id}").eval()',
            f'processor = AutoImageProcessor.from_pretrained("{model_id}")',
            'image = Image.open("chest_xray.png").convert("RGB")',
            'inputs = processor(images=image, return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits  # [1, C, H, W]",
            "probs = torch.nn.functional.interpolate(logits, size=image.size[::-1], mode='bilinear').sigmoid()[0]",
            "masks = probs >= 0.5  # one plane per finding, in config.id2label order",
        ]
    else:
        lines += [
            "from PIL import Image",
            "from transformers import pipeline",
            "",
            f'segmenter = pipeline("image-segmentation", model="{model_id}")',
            'results = segmenter(Image.open("chest_xray.png").convert("RGB"))',
            "masks = {r['label']: r['mask'] for r in results}  # PIL masks at the input size, labels present only",
            "",
            "# probabilities instead of the arg-max masks:",
            "import torch",
            "from transformers import AutoImageProcessor, UperNetForSemanticSegmentation",
            f'model = UperNetForSemanticSegmentation.from_pretrained("{model_id}").eval()',
            f'processor = AutoImageProcessor.from_pretrained("{model_id}")',
            'inputs = processor(images=Image.open("chest_xray.png").convert("RGB"), return_tensors="pt")',
            "with torch.no_grad():",
            "    probs = model(**inputs).logits.softmax(dim=1)[0, 1]  # pneumothorax probability [H, W]",
        ]
    lines += [
        "```",
        "",
        "## Intended use and limitations",
        "",
        "- **Research and education only. This model is not a medical device**, has not been clinically validated, "
        "and must not be used for diagnosis, triage or any decision about a patient.",
        "- It was trained and evaluated on one public dataset; radiographs from other hospitals, scanners, "
        "populations, projections (lateral, portable AP) or paediatric patients may give much worse results.",
        "- Public chest X-ray labels are noisy and come from one reading protocol per dataset.",
        *(
            [
                "- Many positive SIIM-ACR images show a chest drain (an already treated pneumothorax); models "
                "trained on them can partly rely on the drain, so untreated pneumothoraces may be found less often."
            ]
            if labels.task == "pneumothorax" and not synthetic
            else []
        ),
        "- Metrics above are on a held-out validation split of the same dataset, not an external test set.",
    ]
    if synthetic:
        lines.append("- **This model was trained on synthetic images** to test the pipeline; it is of no clinical use.")
    lines += [
        "",
        "## Training recipe",
        "",
        f"The resolved recipe is `{RECIPE_FILENAME}` in this repository; with cxrseg, "
        f"`accelerate launch run_train.py --config {RECIPE_FILENAME}` reruns it (after setting `data_dir`).",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
    ]
    if citations and not synthetic:
        lines += ["", "## Citation", "", f"Please cite the data sources ({dataset_name} and NIH ChestX-ray14):", ""]
        lines += ["```bibtex", "\n\n".join(citations), "```"]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Write :func:`model_card` to ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_FILENAME
    return atomic_write_text(path, model_card(folder, repo_id))


# ---------------------------------------------------------------------------------------------------- push
def upload_plan(folder: str | os.PathLike, token: str | None = None) -> dict[str, bytes | Path]:
    """What a push uploads: path in the repo → bytes (redacted text) or the local file (binary). See module doc."""
    folder = Path(folder)
    plan: dict[str, bytes | Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix not in UPLOAD_SUFFIXES:
            continue
        if path.suffix not in TEXT_SUFFIXES:
            plan[path.name] = path
            continue
        text = path.read_text()
        if path.name == RECIPE_FILENAME:
            shared, rewritten = shareable_recipe(yaml.safe_load(text) or {})
            header = text.splitlines()[0] + "\n" if text.startswith("#") else ""
            if rewritten:
                header += f"# Local paths made relative or cut to their last part for sharing: {', '.join(rewritten)}\n"
            text = header + yaml.safe_dump(shared, sort_keys=False)
        plan[path.name] = redact_text(text, folder, token).encode()
    return plan


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
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} has no config.json and *.safetensors: not a saved model folder.")
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
