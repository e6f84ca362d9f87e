"""The benchmark scripts run (tiny, once), so they cannot rot. Their numbers are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_train_step_bench_runs_one_tiny_step_per_variant(tmp_path):
    out = tmp_path / "result.json"
    variants = "fp32-reference,bf16,+channels-last,+fused-adamw,recipe,recipe+checkpointing"
    cmd = [
        sys.executable,
        "bench/train_step.py",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--variants",
        variants,
        "--json",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [row["variant"] for row in report["results"]] == variants.split(",")
    assert all(row["images_per_s"] > 0 and row["tflops"] > 0 for row in report["results"])
    assert report["flops_per_image"] > 0


@pytest.mark.slow
def test_data_bench_runs(tmp_path):
    cmd = [
        sys.executable,
        "bench/data.py",
        "--num-images",
        "8",
        "--stored-size",
        "64",
        "--image-size",
        "64",
        "--batch-size",
        "4",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "standard:" in result.stdout and "aggressive:" in result.stdout
