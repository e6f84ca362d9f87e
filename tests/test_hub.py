"""Hub: what a push uploads (exactly), that it holds no token or local path, that the pushed folder works with
from_pretrained and the image-segmentation pipeline, the model card, and the start-up check. Only the network boundary
(``HfApi``) is replaced: a commit lands in a local folder laid out as the Hub repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from PIL import Image
from transformers import AutoImageProcessor, UperNetForSemanticSegmentation, pipeline

import cxrseg.hub
from cxrseg.cli import main as cli_main
from cxrseg.config import parse_recipe, save_recipe
from cxrseg.hub import (
    CARD_TEMPLATE,
    HubAccessError,
    card_template,
    check_hub_access,
    model_card,
    push_folder,
    upload_plan,
)
from cxrseg.labels import CHESTXDET, PNEUMOTHORAX, LabelSet
from cxrseg.model import build_model
from cxrseg.postprocess import ClassPostProcess, PostProcess
from cxrseg.synthetic import synthetic_radiograph
from cxrseg.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken0123"
ME = {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}
REPO_FILES = {
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "postprocess.json",
    "recipe.yaml",
    "README.md",
    "splits.json",
    "all_results.json",
    "trainer_state.json",
    "training_curves.png",
}
RESULTS = {
    "eval_dice": 0.61234,
    "eval_kaggle_dice": 0.83212,
    "eval_iou": 0.44,
    "eval_ap": 0.55121,
    "eval_best_f1": 0.64,
    "eval_best_threshold": 0.43,
    "eval_num_images": 5.0,
    "train_loss": 0.3,
}


class FakeHub:
    """Stands in for the ``HfApi`` class: records calls; ``create_commit`` writes the files into ``repo``."""

    def __init__(self, repo: Path, me: dict | None = None, error: Exception | None = None) -> None:
        self.repo, self.me, self.error = repo, me or ME, error
        self.calls: list[tuple] = []

    def __call__(self, token: str | None = None) -> FakeHub:
        return self

    def whoami(self) -> dict:
        self.calls.append(("whoami",))
        if self.error is not None:
            raise self.error
        return self.me

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False) -> None:
        self.calls.append(("create_repo", repo_id, private))

    def create_commit(self, repo_id: str, operations, *, commit_message: str) -> SimpleNamespace:
        self.calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
        self.repo.mkdir(parents=True, exist_ok=True)
        for op in operations:
            with op.as_file() as file:
                (self.repo / op.path_in_repo).write_bytes(file.read())
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub_repo")
    monkeypatch.setattr(cxrseg.hub, "HfApi", fake)
    monkeypatch.setattr(cxrseg.hub.hub_constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1
    return fake


def xray_image() -> Image.Image:
    return Image.fromarray(synthetic_radiograph(5, 96, positive=True)[0]).convert("RGB")


@pytest.fixture
def output_folder(tmp_path) -> Path:
    """An output folder as training leaves it, with the files that must not be uploaded."""
    out = tmp_path / "out"
    torch.manual_seed(0)
    model, processor = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, 64)
    model.eval()
    # Shift the pneumothorax bias so that about half the test image's pixels go to each class: every label shows.
    with torch.no_grad():
        logits = model(**processor(images=xray_image(), return_tensors="pt")).logits
        model.decode_head.classifier.bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    recipe = parse_recipe([
        "--config", "recipe/demo.yaml", "--generate_demo_data", "false", "--data_dir", str(tmp_path / "data/siim"),
        "--output_dir", str(out), "--model_config", json.dumps(TINY_MODEL_CONFIG), "--image_size", "64",
        "--hub_token", TOKEN, "--push_to_hub", "true", "--hub_model_id", "me/tiny",
    ])  # fmt: skip
    save_recipe(recipe, out / "recipe.yaml")
    (out / "all_results.json").write_text(json.dumps(RESULTS))
    (out / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": str(out / "checkpoint-2")}))
    (out / "splits.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    PostProcess(0.75, 10, 0.3, image_size=64).save(out)
    Image.new("RGB", (8, 8)).save(out / "training_curves.png")
    torch.save({"hub_token": TOKEN, "output_dir": str(out)}, out / "training_args.bin")
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2/optimizer.pt").write_bytes(b"state")
    (out / "runs").mkdir()
    (out / "runs/events.out.tfevents.1").write_bytes(b"events")
    return out


def test_push_uploads_exactly_the_repo_files(output_folder, hub):
    url = push_folder(output_folder, "me/tiny", private=True, token=TOKEN)
    assert url == "https://huggingface.co/me/tiny/commit/0"
    assert hub.calls == [("create_repo", "me/tiny", True), ("create_commit", "me/tiny", sorted(REPO_FILES))]
    assert {p.name for p in hub.repo.iterdir()} == REPO_FILES
    assert (output_folder / "README.md").is_file()  # the card is also written locally: the folder is the repo


def test_pushed_files_hold_no_token_or_local_path(output_folder, hub, tmp_path, caplog):
    caplog.set_level("DEBUG")
    push_folder(output_folder, "me/tiny", token=TOKEN)
    local = [str(tmp_path), str(tmp_path.resolve()), str(Path.cwd()), str(Path.home())]
    for path in hub.repo.iterdir():
        data = path.read_bytes()
        assert TOKEN.encode() not in data, path.name
        for prefix in local:
            assert prefix.encode() not in data, (path.name, prefix)
    assert TOKEN not in caplog.text and str(tmp_path) not in caplog.text
    shared = yaml.safe_load((hub.repo / "recipe.yaml").read_text())
    assert shared["data_dir"] == "siim" and shared["output_dir"] == "out" and "hub_token" not in shared
    assert "made relative or cut" in (hub.repo / "recipe.yaml").read_text()
    parse_recipe(["--config", str(hub.repo / "recipe.yaml")])  # still a valid recipe
    assert json.loads((hub.repo / "trainer_state.json").read_text())["best_model_checkpoint"] == "checkpoint-2"
    # The local files are untouched: the local recipe still reproduces the run here.
    assert yaml.safe_load((output_folder / "recipe.yaml").read_text())["output_dir"] == str(output_folder)


def test_pushed_folder_works_with_from_pretrained_and_the_pipeline(output_folder, hub):
    push_folder(output_folder, "me/tiny")
    model = UperNetForSemanticSegmentation.from_pretrained(hub.repo).eval()
    saved = UperNetForSemanticSegmentation.from_pretrained(output_folder).state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    assert model.config.id2label == PNEUMOTHORAX.id2label

    image = xray_image()
    results = pipeline("image-segmentation", model=str(hub.repo), device="cpu")(image)
    # One mask per label, at the input size, from the model's own arg-max.
    assert sorted(r["label"] for r in results) == ["background", "pneumothorax"]
    processor = AutoImageProcessor.from_pretrained(hub.repo)
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    argmax = F.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    for result in results:
        mask = np.asarray(result["mask"])
        assert result["mask"].size == image.size
        np.testing.assert_array_equal(mask > 0, argmax == model.config.label2id[result["label"]])


def test_model_card(output_folder, hub):
    push_folder(output_folder, "me/tiny")
    text = (hub.repo / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    for row in (
        "| dice | 0.6123 |",
        "| kaggle_dice | 0.8321 |",
        "| ap | 0.5512 |",
        "| best_threshold | 0.4300 |",
        "| num_images | 5 |",
    ):
        assert row in text
    assert "not a medical device" in text
    assert 'pipeline("image-segmentation", model="me/tiny")' in text and 'from_pretrained("me/tiny")' in text
    assert "SIIM-ACR Pneumothorax Segmentation" in text and "@misc{siim-acr" in text and "ChestX-ray8" in text
    assert "ChestX-Det" not in text
    assert "at least 10 pixels" in text and "binarise at 0.3" in text  # postprocess.json
    assert "image_size: 64" in text  # the recipe


def card_folder(
    folder: Path, labels: LabelSet, recipe_argv: list[str], results: dict | None = None, postprocess: bool = False
) -> Path:
    """An output folder holding what the card reads: config.json, recipe.yaml, all_results.json, postprocess.json."""
    model, _ = build_model(None, TINY_MODEL_CONFIG, labels, 64)
    model.config.save_pretrained(folder)
    save_recipe(parse_recipe(recipe_argv), folder / "recipe.yaml")
    if results is not None:
        (folder / "all_results.json").write_text(json.dumps(results))
    if postprocess:
        PostProcess(0.75, 10, 0.3, image_size=64).save(folder)
    return folder


def test_model_card_chestxdet_and_synthetic(tmp_path):
    results = {"eval_dice": 0.5, "eval_dice/Nodule": 0.25, "eval_ap": 0.4}
    argv = ["--config", "recipe/chestxdet_demo.yaml", "--generate_demo_data", "false"]
    out = card_folder(tmp_path, CHESTXDET, argv, results)
    text = model_card(out, "lab/cxd")
    assert "ChestX-Det" in text and "lian2021sarnet" in text and "SIIM" not in text
    assert "| Nodule | 0.2500 | n/a | n/a |" in text
    rules = [
        PostProcess(0.3, 2, 0.2, 64) if name == "Nodule" else PostProcess(0.5, 0, 0.5, 64) for name in CHESTXDET.names
    ]
    ClassPostProcess(CHESTXDET.names, rules).save(out)
    assert "| Nodule | 0.3 | 2 | 0.2 |" in model_card(out)  # per-class post-processing
    assert ".sigmoid()" in text and "pipeline(" not in text  # the pipeline's arg-max is wrong for multi-label
    save_recipe(parse_recipe(["--config", "recipe/demo.yaml"]), out / "recipe.yaml")
    text = model_card(out)
    assert "not real X-rays" in text and "## Citation" not in text and "path/to/this/folder" in text


TAGS = ["medical-imaging", "chest-x-ray", "semantic-segmentation", "upernet", "swin", "cxrseg"]


@pytest.mark.parametrize(
    ("base_model", "hub_id", "line"),
    [
        (None, None, "- Trained from scratch (no pretrained weights)."),
        ("openmmlab/upernet-swin-base", "openmmlab/upernet-swin-base", "- Base model: `openmmlab/upernet-swin-base`"),
        ("pretrained", None, "- Initialised from a local model folder."),  # made in tmp_path: not a Hub id
    ],
    ids=["scratch", "hub-id", "local-folder"],
)
def test_model_card_metadata(tmp_path, base_model, hub_id, line):
    if base_model == "pretrained":
        base_model = str(tmp_path / "pretrained")
        Path(base_model).mkdir()
    argv = ["--config", "recipe/demo.yaml", "--generate_demo_data", "false"]
    argv += ["--model_name_or_path", base_model] if base_model else []
    card = ModelCard(model_card(card_folder(tmp_path / "out", PNEUMOTHORAX, argv, RESULTS), "me/tiny"))
    expected = {"library_name": "transformers", "pipeline_tag": "image-segmentation", "tags": [*TAGS, "pneumothorax"]}
    assert card.data.to_dict() == ({**expected, "base_model": hub_id} if hub_id else expected)
    assert card.text.startswith("\n# tiny\n") and card.text.endswith("```\n")
    base_lines = ["- Trained from scratch", "- Base model:", "- Initialised from a local model folder"]
    assert [card.text.count(start) for start in base_lines] == [int(line.startswith(s)) for s in base_lines]
    assert line in card.text


# Each conditional part of the card, by a text that only it contains.
CARD_PARTS = {
    "siim": "trained with cxrseg on [SIIM-ACR Pneumothorax Segmentation](https://www.kaggle.com/",
    "chestxdet": "trained with cxrseg on [ChestX-Det](https://github.com/",
    "custom data": "trained with cxrseg on custom data.",
    "synthetic data": "trained with cxrseg on the synthetic demo dataset",
    "no results": "| (no evaluation results in this folder) | | |",
    "class table": "| class | dice | kaggle_dice | ap |",
    "post-processing": "Post-processing (`postprocess.json`, the SIIM-ACR winners' triplet rule): keep",
    "pipeline code": 'segmenter = pipeline("image-segmentation", model="me/card")',
    "sigmoid code": "mode='bilinear').sigmoid()[0]",
    "chest drain": "- Many positive SIIM-ACR images show a chest drain",
    "synthetic warning": "- **This model was trained on synthetic images**",
    "citation": "## Citation",
}
ALWAYS = ("## Evaluation", "## How to use", "## Intended use and limitations", "not a medical device", "```yaml")
CUSTOM = LabelSet("custom", ("background", "nodule"), multilabel=False)
REAL, SYNTHETIC = ["--generate_demo_data", "false"], ["--generate_demo_data", "true"]


@pytest.mark.parametrize(
    ("labels", "recipe", "results", "postprocess", "parts"),
    [
        (PNEUMOTHORAX, REAL, RESULTS, True, {"siim", "post-processing", "pipeline code", "chest drain", "citation"}),
        (PNEUMOTHORAX, REAL, None, False, {"siim", "no results", "pipeline code", "chest drain", "citation"}),
        (PNEUMOTHORAX, SYNTHETIC, RESULTS, False, {"synthetic data", "pipeline code", "synthetic warning"}),
        (CHESTXDET, REAL, RESULTS, True, {"chestxdet", "class table", "post-processing", "sigmoid code", "citation"}),
        (
            CHESTXDET,
            SYNTHETIC,
            None,
            True,
            {"synthetic data", "no results", "class table", "post-processing", "sigmoid code", "synthetic warning"},
        ),
        (CUSTOM, REAL, RESULTS, False, {"custom data", "pipeline code"}),
    ],
    ids=["siim", "siim-no-results", "siim-synthetic", "chestxdet", "chestxdet-synthetic", "custom"],
)
def test_model_card_parts_appear_exactly_when_they_apply(tmp_path, labels, recipe, results, postprocess, parts):
    argv = ["--config", "recipe/chestxdet_demo.yaml" if labels.multilabel else "recipe/demo.yaml", *recipe]
    text = model_card(card_folder(tmp_path, labels, argv, results, postprocess), "me/card")
    assert {name: text.count(part) for name, part in CARD_PARTS.items()} == {
        name: int(name in parts) for name in CARD_PARTS
    }
    assert all(text.count(part) == 1 for part in ALWAYS)
    # Tables: header and separator, then a row per metric (RESULTS has all 7) or the "no results" row, then for
    # multi-label models header, separator and a row per class.
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + (7 if results else 1) + (2 + len(labels.foreground) if labels.multilabel else 0)


def test_card_template_ships_in_the_wheel(tmp_path):
    """The package data in pyproject.toml puts the template into a built wheel, where importlib.resources (as
    :func:`card_template` reads it) finds it, from the zip. Built offline with the project's own build backend."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    subprocess.run([*build, "--wheel-dir", str(tmp_path / "dist"), str(project)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("cxrseg-*.whl")
    code = (
        "import cxrseg, importlib.resources; print(cxrseg.__file__); "
        f"print(importlib.resources.files('cxrseg').joinpath({CARD_TEMPLATE!r}).read_text(), end='')"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    package_file, template = done.stdout.split("\n", 1)
    assert package_file.startswith(str(wheel))  # the package came from the wheel, not from src/
    assert template == card_template() == (ROOT / "src/cxrseg/templates/model_card.md").read_text()


def test_failed_push_says_how_to_retry(output_folder, hub, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "create_commit", offline)
    with pytest.raises(HubAccessError, match=r"Network is unreachable.*cxrseg push --model OUTPUT_DIR --repo-id me/x"):
        push_folder(output_folder, "me/x")


def test_upload_plan_never_includes_checkpoints_or_training_args(output_folder):
    plan = upload_plan(output_folder)
    assert not {"training_args.bin", "checkpoint-2", "runs", "optimizer.pt"} & set(plan)


@pytest.mark.parametrize(
    ("error", "me", "repo_id", "message"),
    [
        (OSError("Failed to resolve 'huggingface.co'"), None, "me/x", "cannot be reached"),
        (LocalTokenNotFoundError("no token"), None, "me/x", "no Hugging Face token"),
        (None, None, "other/x", "cannot write to 'other'"),
        (None, {**ME, "auth": {"accessToken": {"role": "read"}}}, "me/x", "read-only"),
    ],
)
def test_check_hub_access_fails_clearly(hub, error, me, repo_id, message):
    hub.error, hub.me = error, me or ME
    with pytest.raises(HubAccessError, match=message):
        check_hub_access(repo_id)


def test_check_hub_access_resolves_the_namespace(hub, monkeypatch):
    assert check_hub_access("x") == "me/x"
    assert check_hub_access("lab/x") == "lab/x"
    monkeypatch.setattr(cxrseg.hub.hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        check_hub_access("me/x")


def train_argv(demo_root, out, *extra) -> list[str]:
    return [
        "--config", "recipe/demo.yaml", "--data_dir", str(demo_root), "--image_size", "64",
        "--model_config", json.dumps(TINY_MODEL_CONFIG), "--num_train_epochs", "1", "--per_device_train_batch_size",
        "4", "--output_dir", str(out), "--push_to_hub", "true", "--hub_token", TOKEN, *extra,
    ]  # fmt: skip


def test_training_with_push_fails_before_training_without_the_hub(hub, demo_root, tmp_path, capsys):
    hub.error = OSError("Failed to resolve 'huggingface.co'")
    assert train_main(train_argv(demo_root, tmp_path / "out", "--hub_model_id", "me/tiny")) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_training_pushes_our_card_and_no_checkpoints_at_the_end(hub, demo_root, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert train_main(train_argv(demo_root, out, "--hub_model_id", "tiny", "--hub_private_repo", "true")) == 0
    commits = [call for call in hub.calls if call[0] == "create_commit"]
    assert hub.calls[0] == ("whoami",) and ("create_repo", "me/tiny", True) in hub.calls and len(commits) == 1
    files = {p.name for p in hub.repo.iterdir()}
    assert REPO_FILES - {"postprocess.json", "training_curves.png"} <= files
    assert files <= REPO_FILES | {"eval_results.json", "train_results.json"}
    card = (hub.repo / "README.md").read_text()
    assert "not a medical device" in card and 'model="me/tiny"' in card
    assert "More information needed" not in card  # not the Trainer's generated card
    results = json.loads((out / "all_results.json").read_text())
    assert f"| dice | {results['eval_dice']:.4f} |" in card
    logs = capsys.readouterr()
    assert TOKEN not in logs.out + logs.err + caplog.text
    for path in hub.repo.iterdir():
        assert TOKEN.encode() not in path.read_bytes() and str(tmp_path).encode() not in path.read_bytes()


def test_push_cli(output_folder, hub, capsys):
    assert cli_main(["push", "--model", str(output_folder), "--repo-id", "lab/cli", "--private"]) == 0
    assert ("create_repo", "lab/cli", True) in hub.calls
    assert 'model="lab/cli"' in (hub.repo / "README.md").read_text()
    hub.error = OSError("Failed to resolve 'huggingface.co'")
    assert cli_main(["push", "--model", str(output_folder), "--repo-id", "lab/cli"]) == 2
    assert "cannot be reached" in capsys.readouterr().err
