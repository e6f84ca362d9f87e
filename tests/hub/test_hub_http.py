"""Pushed repos downloaded over HTTP, from the olah server of tests/hub_server.py: ``from_pretrained``, the
image-segmentation pipeline, ``cxrseg predict`` and ``cxrseg evaluate`` with a Hub id give what the local folder
gives; checkpoints pushed during training (``hub_strategy``) load, and a run continues from a Hub checkpoint to the
weights of a run that was never interrupted. Uploads go through the replaced HfApi (``served_hub``); everything
downloaded comes over HTTP into an empty cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError
from PIL import Image
from transformers import AutoImageProcessor, TrainerCallback, UperNetForSemanticSegmentation, pipeline

from cxrseg.cli import main as cli_main
from cxrseg.config import parse_recipe
from cxrseg.errors import HubAccessError
from cxrseg.hub.checkpoints import download_checkpoint
from cxrseg.hub.push import push_folder
from cxrseg.postprocessing.rules import PostProcess
from cxrseg.synthetic import synthetic_radiograph
from cxrseg.training.train import main as train_main
from cxrseg.training.train import train
from tests.conftest import TINY_MODEL_CONFIG, save_tiny_model
from tests.hub.test_hub import TOKEN, output_folder, xray_image  # noqa: F401 (output_folder is a fixture)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def downloaded(repo_id: str) -> set[str]:
    """The files of ``repo_id`` in this test's Hugging Face cache (empty at its start: see ``served_hub``)."""
    snapshots = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return {p.relative_to(s).as_posix() for s in snapshots.iterdir() for p in s.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------- the server
def test_the_server_answers_as_the_hub_documents(served_hub, tmp_path):
    """The workaround in tests/hub_server.py: a missing file in an existing repo and revision is 404 EntryNotFound
    (huggingface_hub: EntryNotFoundError; ``file_exists`` False), ``model_info`` without a revision is the info of
    main; a missing repo stays RepositoryNotFoundError (olah's own answer)."""
    push_folder(save_tiny_model(tmp_path / "model"), "me/answers")
    url = f"{served_hub.endpoint}/me/answers/resolve/main/processor_config.json"
    for method in ("HEAD", "GET"):
        with pytest.raises(HTTPError) as answer:
            urlopen(Request(url, method=method))
        assert answer.value.code == 404 and answer.value.headers["X-Error-Code"] == "EntryNotFound"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("me/answers", "processor_config.json")
    api = HfApi()
    assert api.file_exists("me/answers", "config.json") and not api.file_exists("me/answers", "nothing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/no-such-repo", "config.json")
    info = api.model_info("me/answers")
    assert info.sha == served_hub.log("me/answers")[-1][0]
    assert {s.rfilename for s in info.siblings} == served_hub.files("me/answers")


# ---------------------------------------------------------------------------------------------- inference
def test_from_pretrained_and_the_pipeline_over_http_equal_the_local_folder(output_folder, served_hub):  # noqa: F811
    push_folder(output_folder, "me/tiny-http")
    model = UperNetForSemanticSegmentation.from_pretrained("me/tiny-http").eval()
    local = UperNetForSemanticSegmentation.from_pretrained(output_folder).eval()
    assert same_tensors(model.state_dict(), local.state_dict())  # byte-exact weights
    assert downloaded("me/tiny-http") == {"config.json", "model.safetensors"}

    image = xray_image()
    results = pipeline("image-segmentation", model="me/tiny-http", device="cpu")(image)
    expected = pipeline("image-segmentation", model=str(output_folder), device="cpu")(image)
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    for result, reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(result["mask"]), np.asarray(reference["mask"]))
    # One mask per label, at the input size, from the model's own arg-max.
    assert sorted(r["label"] for r in results) == ["background", "pneumothorax"]
    processor = AutoImageProcessor.from_pretrained("me/tiny-http")
    assert "preprocessor_config.json" in downloaded("me/tiny-http")
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    argmax = F.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    for result in results:
        assert result["mask"].size == image.size
        np.testing.assert_array_equal(np.asarray(result["mask"]) > 0, argmax == model.config.label2id[result["label"]])


def test_predict_and_evaluate_with_a_hub_id_equal_the_local_folder(served_hub, demo_root, tmp_path):
    ids = sorted(p.stem for p in (demo_root / "images/train").glob("*.png"))
    model = save_tiny_model(tmp_path / "model", seed=3, splits={"train": ids[:16], "val": ids[16:]})
    rule = PostProcess(top_threshold=0.5, min_area=20, bottom_threshold=0.45, image_size=64)
    rule.save(model)
    push_folder(model, "me/cli-http")
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(3):
        Image.fromarray(synthetic_radiograph(seed, 96, positive=True)[0]).save(images / f"x{seed}.png")

    for source, name in ((str(model), "local"), ("me/cli-http", "hub")):
        predict = ["predict", "--model", source, "--input", str(images), "--out", str(tmp_path / name)]
        assert cli_main([*predict, "--num-workers", "0", "--save-probabilities"]) == 0
        evaluate = ["evaluate", "--model", source, "--data", str(demo_root), "--out", str(tmp_path / f"{name}-eval")]
        assert cli_main([*evaluate, "--num-workers", "0"]) == 0
    assert {"postprocess.json", "splits.json"} <= downloaded("me/cli-http")
    for kind in ("masks", "probabilities"):
        local = sorted((tmp_path / "local" / kind).iterdir())
        assert len(local) == 3
        for path in local:
            assert (tmp_path / "hub" / kind / path.name).read_bytes() == path.read_bytes(), (kind, path.name)
    metrics = {name: json.loads((tmp_path / f"{name}-eval/metrics.json").read_text()) for name in ("local", "hub")}
    assert metrics["hub"].pop("model") == "me/cli-http" and metrics["local"].pop("model") == str(model)
    # Where the split came from: the val list of the downloaded splits.json (in the cache) or of the local one.
    assert "models--me--cli-http" in metrics["hub"].pop("images") and str(model) in metrics["local"].pop("images")
    assert metrics["hub"] == metrics["local"]
    assert metrics["hub"]["postprocess"] == rule.to_dict()  # the Hub's postprocess.json was applied
    assert metrics["hub"]["num_images"] == 8  # the val list of the Hub's splits.json


# ---------------------------------------------------------------------------------------------- training
def train_argv(demo_root, out, *extra) -> list[str]:
    return [
        "--config", "recipe/demo.yaml", "--data_dir", str(demo_root), "--image_size", "64", "--augmentation", "none",
        "--model_config", json.dumps(TINY_MODEL_CONFIG), "--num_train_epochs", "2", "--per_device_train_batch_size",
        "8", "--output_dir", str(out), "--load_best_model_at_end", "false", *extra,
    ]  # fmt: skip


def hub_argv(repo_id: str, strategy: str) -> list[str]:
    return ["--push_to_hub", "true", "--hub_model_id", repo_id, "--hub_strategy", strategy, "--hub_token", TOKEN]


@pytest.mark.slow
def test_every_save_makes_one_loadable_commit_per_save(served_hub, demo_root, tmp_path):
    out = tmp_path / "out"
    argv = train_argv(demo_root, out, *hub_argv("me/every-save", "every_save"), "--hub_always_push", "true")
    assert train_main(argv) == 0
    log = served_hub.log("me/every-save")
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert [message for _, message in log] == [f"Training in progress, step {s}" for s in steps] + [
        "Upload cxrseg model"
    ]
    for (sha, _), step in zip(log, steps, strict=False):
        files = served_hub.files("me/every-save", sha)
        assert files == {"config.json", "model.safetensors", "preprocessor_config.json", "recipe.yaml", "splits.json",
                         "README.md"}  # fmt: skip
        pushed = UperNetForSemanticSegmentation.from_pretrained("me/every-save", revision=sha)
        saved = UperNetForSemanticSegmentation.from_pretrained(out / f"checkpoint-{step}")
        assert same_tensors(pushed.state_dict(), saved.state_dict())
        card = served_hub.read("me/every-save", "README.md", sha).decode()
        assert f"**Training in progress**: the model and metrics of step {step}." in card and "| dice |" in card
        for name in files:
            data = served_hub.read("me/every-save", name, sha)
            assert TOKEN.encode() not in data and str(tmp_path).encode() not in data, name
    final = UperNetForSemanticSegmentation.from_pretrained("me/every-save")
    assert same_tensors(final.state_dict(), UperNetForSemanticSegmentation.from_pretrained(out).state_dict())
    assert TOKEN.encode() not in (out / "training_args.bin").read_bytes()  # the token never reached TrainingArguments


class StopAfterFirstSave(TrainerCallback):
    """The run is interrupted (stops) right after its first save, as a run whose machine goes away."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.mark.slow
def test_a_run_continues_from_the_hubs_last_checkpoint_to_the_uninterrupted_weights(served_hub, demo_root, tmp_path):
    uninterrupted = CountSteps()
    train(parse_recipe(train_argv(demo_root, tmp_path / "uninterrupted")), callbacks=[uninterrupted])
    interrupted = train_argv(demo_root, tmp_path / "first-machine", *hub_argv("me/resume", "checkpoint"))
    train(parse_recipe(interrupted), callbacks=[StopAfterFirstSave()])
    (saved,) = (tmp_path / "first-machine").glob("checkpoint-*")
    step = int(saved.name.split("-")[1])
    ((sha, message), (_, final)) = served_hub.log("me/resume")
    assert (message, final) == (f"Training in progress, step {step}", "Upload cxrseg model")
    checkpoint = {f for f in served_hub.files("me/resume", sha) if f.startswith("last-checkpoint/")}
    assert checkpoint == {f"last-checkpoint/{p.name}" for p in saved.iterdir() if p.name != "training_args.bin"}
    state = served_hub.read("me/resume", "last-checkpoint/trainer_state.json", sha)
    assert str(tmp_path).encode() not in state and TOKEN.encode() not in state

    # Another machine: an empty cache and output folder; the checkpoint comes from the server.
    resumed = CountSteps()
    argv = train_argv(demo_root, tmp_path / "second-machine", "--resume_from_checkpoint", "me/resume")
    train(parse_recipe(argv), callbacks=[resumed])
    assert downloaded("me/resume") == checkpoint
    assert resumed.steps == uninterrupted.steps - step  # it continued (a fresh start would reach the same weights)
    weights = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "second-machine").state_dict()
    expected = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "uninterrupted").state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_download_checkpoint_takes_the_newest_or_says_what_to_do(served_hub, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    push_folder(model, "me/no-checkpoints")
    with pytest.raises(HubAccessError, match="no last-checkpoint/ or checkpoint-N/.*hub_strategy: checkpoint"):
        download_checkpoint("me/no-checkpoints")
    with pytest.raises(HubAccessError, match="is not a local folder.*RepositoryNotFoundError"):
        download_checkpoint("me/never-pushed")
    for step in (4, 12):  # all_checkpoints: the largest step, not the last in text order ("checkpoint-4")
        save_tiny_model(model / f"checkpoint-{step}", seed=step)
    served_hub().create_commit("me/all-checkpoints", folder_operations(model), commit_message="all_checkpoints")
    folder = download_checkpoint("me/all-checkpoints")
    assert folder.name == "checkpoint-12" and (folder / "model.safetensors").is_file()


def folder_operations(folder: Path) -> list[CommitOperationAdd]:
    """Every file under ``folder``, at its relative path."""
    files = (path for path in sorted(folder.rglob("*")) if path.is_file())
    return [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]


def test_resuming_from_an_unreadable_hub_repo_fails_before_any_work(served_hub, demo_root, tmp_path, capsys):
    argv = train_argv(demo_root, tmp_path / "out", "--resume_from_checkpoint", "me/never-pushed")
    assert train_main(argv) == 2
    assert "resume_from_checkpoint 'me/never-pushed' is not a local folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
