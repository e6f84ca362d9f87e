"""``cxrseg env``: versions, devices, a forward/backward per device, the accelerate config, and exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import accelerate.commands.config
import pytest
import torch

from cxrseg.cli import env as env_cli
from cxrseg.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_env_on_cpu_reports_versions_devices_and_passes(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(accelerate.commands.config, "default_config_file", str(tmp_path / "missing.yaml"))
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"torch: {torch.__version__}" in out
    for package in ("transformers", "accelerate", "datasets", "albumentations"):
        assert f"\n{package}: " in out
    assert "cpu fp32: ok" in out
    assert "no default config" in out


def test_env_reads_the_default_accelerate_config(capsys, monkeypatch, tmp_path):
    config = tmp_path / "default_config.yaml"
    shutil.copy(ROOT / "accelerate_configs/cpu_ddp.yaml", config)
    monkeypatch.setattr(accelerate.commands.config, "default_config_file", str(config))
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"default config: {config}" in out
    assert "distributed_type: MULTI_GPU" in out and "num_processes: 2" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_env_cuda_requested_without_cuda_fails_clearly(capsys):
    assert main(["env", "--device", "cuda"]) == 1
    captured = capsys.readouterr()
    assert "--device cuda: no usable CUDA GPU" in captured.err
    assert "cpu fp32" not in captured.out  # only the requested device is tested


def test_env_failing_device_gives_nonzero_exit(capsys, monkeypatch):
    def broken(device, dtype=None):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(env_cli, "smoke_test", broken)
    assert main(["env", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "cpu fp32: FAILED (RuntimeError: no kernel image" in captured.out
    assert "error: cpu fp32 failed" in captured.err


def test_smoke_test_runs_forward_and_backward_on_cpu():
    assert env_cli.smoke_test(torch.device("cpu")) > 0
