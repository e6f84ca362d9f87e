"""Hub: what a push uploads (exactly), that it holds no token or local path, the model card, the start-up check, and
what each save uploads during training (``hub_strategy``), in the background. Only the network boundary (``HfApi``'s
upload API) is replaced: a commit becomes a git commit (tests/hub_server.py). Downloading what was pushed, over HTTP:
tests/hub/test_hub_http.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from PIL import Image

import cxrseg.hub.access
from cxrseg.cli import main as cli_main
from cxrseg.config import parse_recipe, save_recipe
from cxrseg.errors import HubAccessError
from cxrseg.hub.access import check_hub_access
from cxrseg.hub.card import CARD_TEMPLATE, card_template, model_card
from cxrseg.hub.checkpoints import HubCheckpointPush, checkpoint_upload_plan
from cxrseg.hub.push import push_folder, upload_plan
from cxrseg.labels import CHESTXDET, PNEUMOTHORAX, LabelSet
from cxrseg.model import build_model
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess
from cxrseg.synthetic import synthetic_radiograph
from cxrseg.training.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG, save_tiny_model
from tests.hub_server import ME

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken0123"
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
    ((sha, message),) = hub.log("me/tiny")
    assert url == f"https://huggingface.co/me/tiny/commit/{sha}" and message == "Upload cxrseg model"
    assert hub.calls == [("create_repo", "me/tiny", True), ("create_commit", "me/tiny", sorted(REPO_FILES))]
    assert hub.files("me/tiny") == REPO_FILES
    assert (output_folder / "README.md").is_file()  # the card is also written locally: the folder is the repo


def test_pushed_files_hold_no_token_or_local_path(output_folder, hub, tmp_path, caplog):
    caplog.set_level("DEBUG")
    push_folder(output_folder, "me/tiny", token=TOKEN)
    local = [str(tmp_path), str(tmp_path.resolve()), str(Path.cwd()), str(Path.home())]
    for name in hub.files("me/tiny"):
        data = hub.read("me/tiny", name)
        assert TOKEN.encode() not in data, name
        for prefix in local:
            assert prefix.encode() not in data, (name, prefix)
    assert TOKEN not in caplog.text and str(tmp_path) not in caplog.text
    shared = yaml.safe_load((hub.repo("me/tiny") / "recipe.yaml").read_text())
    assert shared["data_dir"] == "siim" and shared["output_dir"] == "out" and "hub_token" not in shared
    assert "made relative or cut" in (hub.repo("me/tiny") / "recipe.yaml").read_text()
    parse_recipe(["--config", str(hub.repo("me/tiny") / "recipe.yaml")])  # still a valid recipe
    assert (
        json.loads((hub.repo("me/tiny") / "trainer_state.json").read_text())["best_model_checkpoint"] == "checkpoint-2"
    )
    # The local files are untouched: the local recipe still reproduces the run here.
    assert yaml.safe_load((output_folder / "recipe.yaml").read_text())["output_dir"] == str(output_folder)


def test_model_card(output_folder, hub):
    push_folder(output_folder, "me/tiny")
    text = (hub.repo("me/tiny") / "README.md").read_text()
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
    expected = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "tags": [*TAGS, "pneumothorax"],
        "license": "other",
        "license_name": "siim-acr-pneumothorax-data-terms",
        "license_link": "https://www.kaggle.com/competitions/siim-acr-pneumothorax-segmentation/rules",
    }
    data = card.data.to_dict()
    assert data.pop("model-index")[0]["name"] == "tiny"  # the results: test_model_index_*
    assert data == ({**expected, "base_model": hub_id} if hub_id else expected)
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
    "class table": "| class | dice | prior_mask_dice | kaggle_dice | prior_mask_kaggle_dice | ap |",
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
    """The package data in pyproject.toml puts the template (and the web app's examples) into a built wheel, where
    importlib.resources (as :func:`card_template` reads it) finds it, from the zip. Built offline with the
    project's own build backend."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    subprocess.run([*build, "--wheel-dir", str(tmp_path / "dist"), str(project)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("cxrseg-*.whl")
    examples = {f"cxrseg/app/examples/{p.name}" for p in (ROOT / "src/cxrseg/app/examples").iterdir()}
    assert len(examples) == 3 and examples <= set(zipfile.ZipFile(wheel).namelist())  # the web app's, with README
    code = (
        "import cxrseg, importlib.resources; print(cxrseg.__file__); "
        f"print(importlib.resources.files('cxrseg.hub').joinpath({CARD_TEMPLATE!r}).read_text(), end='')"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    package_file, template = done.stdout.split("\n", 1)
    assert package_file.startswith(str(wheel))  # the package came from the wheel, not from src/
    assert template == card_template() == (ROOT / "src/cxrseg/hub/templates/model_card.md").read_text()


def test_failed_push_says_how_to_retry(output_folder, hub, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "commit", offline)
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
    monkeypatch.setattr(cxrseg.hub.access.hub_constants, "HF_HUB_OFFLINE", True)
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
def test_hub_strategy_end_pushes_our_card_and_no_checkpoints_at_the_end(hub, demo_root, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    argv = train_argv(demo_root, out, "--hub_model_id", "tiny", "--hub_private_repo", "true", "--hub_strategy", "end")
    assert train_main(argv) == 0
    commits = [call for call in hub.calls if call[0] == "create_commit"]
    assert hub.calls[0] == ("whoami",) and ("create_repo", "me/tiny", True) in hub.calls and len(commits) == 1
    files = hub.files("me/tiny")
    assert REPO_FILES - {"postprocess.json", "training_curves.png"} | {"prior_mask.png"} <= files
    assert files <= REPO_FILES | {"eval_results.json", "train_results.json", "prior_mask.png"}
    card = (hub.repo("me/tiny") / "README.md").read_text()
    assert "not a medical device" in card and 'model="me/tiny"' in card
    assert "More information needed" not in card  # not the Trainer's generated card
    results = json.loads((out / "all_results.json").read_text())
    assert f"| dice | {results['eval_dice']:.4f} |" in card
    logs = capsys.readouterr()
    assert TOKEN not in logs.out + logs.err + caplog.text
    for name in files:
        assert TOKEN.encode() not in hub.read("me/tiny", name) and str(tmp_path).encode() not in hub.read(
            "me/tiny", name
        )
    written = [path for path in out.rglob("*") if path.is_file()]
    assert out / "training_args.bin" in written  # the pickle the token used to end up in
    assert [path for path in written if TOKEN.encode() in path.read_bytes()] == []


def test_push_cli(output_folder, hub, capsys):
    assert cli_main(["push", "--model", str(output_folder), "--repo-id", "lab/cli", "--private"]) == 0
    assert ("create_repo", "lab/cli", True) in hub.calls
    assert 'model="lab/cli"' in (hub.repo("lab/cli") / "README.md").read_text()
    hub.error = OSError("Failed to resolve 'huggingface.co'")
    assert cli_main(["push", "--model", str(output_folder), "--repo-id", "lab/cli"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- during training
CHECKPOINT_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "optimizer.pt", "scheduler.pt",
                    "rng_state.pth", "trainer_state.json"}  # fmt: skip
SAVE_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "recipe.yaml", "splits.json", "README.md"}


@pytest.fixture
def checkpoint(output_folder) -> Path:
    """``checkpoint-4`` as the Trainer saves it into the output folder, training_args.bin with the token included."""
    folder = save_tiny_model(output_folder / "checkpoint-4", seed=4)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(name.encode())
    torch.save({"hub_token": TOKEN, "output_dir": str(output_folder)}, folder / "training_args.bin")
    history = [{"loss": 1.0, "step": 2}, {"eval_loss": 0.5, "eval_dice": 0.25, "step": 2}]
    history += [{"eval_loss": 0.4, "eval_dice": 0.3125, "eval_num_images": 5.0, "step": 4}]
    state = {"global_step": 4, "best_model_checkpoint": str(folder), "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


@pytest.mark.parametrize(
    ("strategy", "folder"),
    [("every_save", None), ("checkpoint", "last-checkpoint"), ("all_checkpoints", "checkpoint-4")],
)
def test_what_a_save_uploads(output_folder, checkpoint, strategy, folder):
    plan = checkpoint_upload_plan(checkpoint, output_folder, "me/tiny", strategy, TOKEN)
    assert set(plan) == SAVE_FILES | ({f"{folder}/{name}" for name in CHECKPOINT_FILES} if folder else set())
    assert plan["model.safetensors"] == checkpoint / "model.safetensors"  # the checkpoint's model
    for name, content in plan.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        assert TOKEN.encode() not in data and str(output_folder.parent).encode() not in data, name
    card = plan["README.md"].decode()  # this checkpoint's last evaluation, not the output folder's all_results.json
    assert "**Training in progress**: the model and metrics of step 4." in card and "| dice | 0.3125 |" in card
    assert "step 2" not in card and "0.6123" not in card and 'model="me/tiny"' in card
    if folder:
        assert json.loads(plan[f"{folder}/trainer_state.json"])["best_model_checkpoint"] == "checkpoint-4"


def save_event(output_folder: Path, step: int = 4) -> tuple[SimpleNamespace, SimpleNamespace]:
    """The (args, state) a TrainerCallback's on_save receives on the main process."""
    return SimpleNamespace(output_dir=str(output_folder)), SimpleNamespace(is_world_process_zero=True, global_step=step)


def test_saves_are_pushed_in_the_background_one_at_a_time(output_folder, checkpoint, hub, monkeypatch, caplog):
    caplog.set_level("INFO", logger="cxrseg")  # an earlier training may have raised its level
    release, commit = threading.Event(), hub.commit
    monkeypatch.setattr(hub, "commit", lambda *args: release.wait(60) and commit(*args))
    push = HubCheckpointPush("me/tiny", "checkpoint", token=TOKEN)
    push.on_save(*save_event(output_folder), control=None)  # returns while the commit waits
    push.on_save(*save_event(output_folder), control=None)  # the previous push still runs: skipped, as the Trainer does
    assert len(push.pushes) == 1 and not push.pushes[0].done()
    assert "Step 4 not pushed: the previous push to me/tiny is still running." in caplog.text
    always = HubCheckpointPush("me/tiny", "checkpoint", token=TOKEN, always_push=True)
    always.on_save(*save_event(output_folder), control=None)
    always.on_save(*save_event(output_folder), control=None)
    assert len(always.pushes) == 2
    weights = (checkpoint / "model.safetensors").read_bytes()
    shutil.rmtree(checkpoint)  # save_total_limit deletes an old checkpoint while its push waits: files are open
    release.set()
    push.on_train_end(None, None, None)
    always.on_train_end(None, None, None)
    assert all(future.done() for future in push.pushes + always.pushes)
    assert [message for _, message in hub.log("me/tiny")] == ["Training in progress, step 4"] * 3
    assert (
        hub.read("me/tiny", "last-checkpoint/model.safetensors") == weights == hub.read("me/tiny", "model.safetensors")
    )
    assert hub.files("me/tiny") == SAVE_FILES | {f"last-checkpoint/{name}" for name in CHECKPOINT_FILES}
    assert [call for call in hub.calls if call[0] == "create_repo"] == [("create_repo", "me/tiny", None)] * 2


def test_a_failed_save_push_is_a_warning_and_end_pushes_nothing(output_folder, checkpoint, hub, monkeypatch, caplog):
    def offline(*args):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "commit", offline)
    push = HubCheckpointPush("me/tiny", "every_save")
    push.on_save(*save_event(output_folder), control=None)
    push.on_train_end(None, None, None)  # waits, does not raise: the final push reports an unreachable Hub
    assert "A checkpoint push to me/tiny failed: OSError: Network is unreachable" in caplog.text
    end = HubCheckpointPush("me/tiny", "end")
    end.on_save(*save_event(output_folder), control=None)
    assert end.pushes == []


def _results_by_split(card: ModelCard) -> dict[str, dict[tuple[str, str | None], tuple[str, float]]]:
    """split → (metric name, class) → (metric type, value), from the card's model-index as huggingface_hub reads it."""
    table: dict = {}
    for result in card.data.eval_results:
        assert (result.task_type, result.task_name) == ("image-segmentation", f"{card.data.tags[-1]} segmentation")
        table.setdefault(result.dataset_split, {})[(result.metric_name, result.metric_config)] = (
            result.metric_type,
            result.metric_value,
        )
    return table


def test_model_index_single_label_as_the_hub_reads_it(output_folder, hub):
    push_folder(output_folder, "me/tiny")
    card = ModelCard.load(hub.repo("me/tiny") / "README.md")  # the pushed card, parsed as the Hub parses it
    assert card.data.model_name == "tiny"
    ((dataset_type, dataset_name),) = {(r.dataset_type, r.dataset_name) for r in card.data.eval_results}
    assert (dataset_type, dataset_name) == ("siim-acr-pneumothorax", "SIIM-ACR Pneumothorax Segmentation")
    # Every metric of all_results.json with a type, rounded as the table shows it; counts and thresholds left out.
    assert _results_by_split(card) == {
        "validation": {
            ("Dice (pooled pixels)", None): ("dice", 0.6123),
            ("Mean per-image Dice (SIIM-ACR rule)", None): ("dice", 0.8321),
            ("IoU (pooled pixels)", None): ("iou", 0.44),
            ("Pixel average precision", None): ("average_precision", 0.5512),
            ("Best pixel F1", None): ("f1", 0.64),
        }
    }
    assert card.data.to_dict()["model-index"][0]["results"][0]["task"] == {
        "type": "image-segmentation",
        "name": "pneumothorax segmentation",
    }


def test_model_index_multilabel_per_class_out_of_fold_and_hub_dataset(tmp_path):
    # A fold of a CV folder trained on a Hub dataset at a revision: validation results per class (NaN left out)
    # and the CV folder's out-of-fold results.
    root = tmp_path / "cv"
    (root / "evaluation/val").mkdir(parents=True)
    (root / "cv.json").write_text(json.dumps({"num_folds": 2, "folds": ["fold_0", "fold_1"]}))
    oof = {"dice": 0.42, "dice/Nodule": 0.3, "kaggle_dice": float("nan"), "num_images": 20, "iou": None}
    (root / "evaluation/val/metrics.json").write_text(json.dumps(oof).replace("NaN", "null"))
    argv = ["--config", "recipe/chestxdet_demo.yaml", "--generate_demo_data", "false"]
    argv += ["--data_dir", "hf://datasets/lab/cxd-png@v1.0"]
    results = {"eval_dice": 0.5, "eval_dice/Nodule": 0.25, "eval_dice/Mass": float("nan"), "eval_ap/Nodule": 0.1}
    card = ModelCard(model_card(card_folder(root / "fold_0", CHESTXDET, argv, results), "lab/cxd-fold0"))
    assert _results_by_split(card) == {
        "validation": {
            ("Dice (pooled pixels)", None): ("dice", 0.5),
            ("Dice (pooled pixels), Nodule", "Nodule"): ("dice", 0.25),
            ("Pixel average precision, Nodule", "Nodule"): ("average_precision", 0.1),
        },
        "out-of-fold": {
            ("Dice (pooled pixels)", None): ("dice", 0.42),
            ("Dice (pooled pixels), Nodule", "Nodule"): ("dice", 0.3),
        },
    }
    assert {(r.dataset_type, r.dataset_name, r.dataset_revision) for r in card.data.eval_results} == {
        ("lab/cxd-png", "lab/cxd-png", "v1.0")
    }
    assert card.data.datasets == ["lab/cxd-png"]
    assert "Out of fold, over the 2 folds" in card.text and "| Dice (pooled pixels), Nodule | 0.3000 |" in card.text


def test_model_index_synthetic_and_no_results(tmp_path):
    argv = ["--config", "recipe/demo.yaml", "--generate_demo_data", "true"]
    card = ModelCard(model_card(card_folder(tmp_path, PNEUMOTHORAX, argv, {"eval_dice": 0.9}), "me/demo"))
    assert card.data.license == "apache-2.0" and card.data.datasets is None
    ((result,),) = [card.data.eval_results]
    assert (result.dataset_type, result.dataset_name) == ("cxrseg-synthetic", "cxrseg synthetic demo data")
    card = ModelCard(model_card(card_folder(tmp_path / "none", PNEUMOTHORAX, argv), "me/demo"))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (SYNTHETIC, "cxrseg's synthetic demo images (drawn radiograph-like pictures, not real X-rays)"),
        (REAL, "SIIM-ACR Pneumothorax Segmentation"),
        ([*REAL, "--data_dir", "hf://datasets/lab/siim-png@v2"], "the Hub dataset lab/siim-png at v2"),
    ],
    ids=["synthetic", "siim", "hub-dataset"],
)
def test_training_data_says_what_the_model_was_trained_on(tmp_path, argv, said):
    from cxrseg.hub.card import training_data

    folder = card_folder(tmp_path, PNEUMOTHORAX, ["--config", "recipe/demo.yaml", *argv])
    assert training_data(folder) == said
    (folder / "recipe.yaml").unlink()
    assert training_data(folder) is None


def test_a_checkpoint_card_indexes_its_latest_evaluation(tmp_path):
    out = card_folder(tmp_path / "out", PNEUMOTHORAX, ["--config", "recipe/demo.yaml", "--generate_demo_data", "false"])
    checkpoint = out / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text((out / "config.json").read_text())
    history = [
        {"eval_loss": 0.9, "eval_dice": 0.1, "step": 2},
        {"loss": 0.5, "step": 3},
        {"eval_loss": 0.7, "eval_dice": 0.3, "eval_iou": 0.2, "step": 4},
    ]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": history}))
    card = ModelCard(model_card(out, "me/ckpt", checkpoint=checkpoint))
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {("dice", 0.3), ("iou", 0.2)}
