"""Tracking: the start-up check for wandb/tensorboard, and a short run whose eval metrics are read back from the W&B
offline run file and the TensorBoard event file."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cxrseg.training import tracking
from cxrseg.training.tracking import TrackingSetupError, check_tracking
from cxrseg.training.train import main as train_main
from tests.conftest import TINY_MODEL_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def no_wandb_login_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where nobody ran `wandb login`: no key, no netrc, no settings file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path)}


def wandb_history(run_file: Path) -> Iterator[dict]:
    """The history rows (``run.log`` calls) of a W&B offline run file (``run-<id>.wandb``).

    The file is a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs (wandb's datastore format): a 7-byte
    header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each ``crc32 (4) | length (2) |
    type (1) | data`` with type 1 full, 2 first, 3 middle, 4 last. wandb >= 0.19 reads it in Go only, so the framing
    is read here and the records are parsed with wandb's own protobuf classes.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_local_wandb_modes_need_no_key(monkeypatch):
    for mode in ("offline", "disabled"):
        monkeypatch.setenv("WANDB_MODE", mode)
        check_tracking(["wandb"])


def test_missing_tensorboard_is_reported(monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    with pytest.raises(TrackingSetupError, match="pip install tensorboard"):
        check_tracking(["tensorboard"])
    check_tracking("none")


@pytest.mark.parametrize("key", [None, "a" * 40])
def test_wandb_key_check_in_a_fresh_process(tmp_path, key):
    """Without a key (and not offline) the check fails with what to do; with WANDB_API_KEY it passes."""
    env = no_wandb_login_env(tmp_path)
    if key:
        env |= {"WANDB_API_KEY": key, "WANDB_SILENT": "true"}  # silent: no network look-up of the user name
    code = "from cxrseg.training.tracking import check_tracking; check_tracking(['wandb'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if key:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert "no W&B API key is configured" in result.stderr and "WANDB_MODE=offline" in result.stderr


def test_training_without_wandb_key_fails_at_start(tmp_path, monkeypatch, capsys):
    import wandb

    for name, value in no_wandb_login_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("WANDB_") and n != "WANDB_CONFIG_DIR"]:
        monkeypatch.delenv(name)
    wandb.teardown()  # forget settings and credentials cached by earlier tests in this process
    out = tmp_path / "out"
    argv = ["--config", "recipe/demo.yaml", "--output_dir", str(out), "--report_to", "wandb"]
    assert train_main([*argv, "--data_dir", str(tmp_path / "none"), "--generate_demo_data", "false"]) == 2
    err = capsys.readouterr().err
    assert "error: report_to includes wandb but no W&B API key" in err and "wandb login" in err
    assert not out.exists()  # failed before writing anything
    wandb.teardown()


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_receive_the_eval_metrics(tmp_path, demo_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = yaml.safe_load((ROOT / "recipe/demo.yaml").read_text())
    recipe |= {"report_to": ["wandb", "tensorboard"], "data_dir": str(demo_root), "image_size": 64,
               "model_config": TINY_MODEL_CONFIG, "num_train_epochs": 1, "per_device_train_batch_size": 4,
               "output_dir": str(tmp_path / "out"), "logging_steps": 1}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = no_wandb_login_env(tmp_path) | {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "t"}
    cmd = [sys.executable, "run_train.py", "--config", str(tmp_path / "recipe.yaml")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out/trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "eval_dice" in entry]  # the evaluations during training
    assert logged

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history = [row for row in wandb_history(run_file) if "eval/dice" in row]
    final = json.loads((tmp_path / "out/eval_results.json").read_text())  # the evaluation after training
    expected = [entry["eval_dice"] for entry in logged] + [final["eval_dice"]]
    assert [row["eval/dice"] for row in history] == pytest.approx(expected)
    assert all("eval/kaggle_dice" in row for row in history)

    (run_dir,) = (tmp_path / "out/runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"eval/dice", "eval/kaggle_dice"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/dice")[0].value == pytest.approx(logged[0]["eval_dice"])
