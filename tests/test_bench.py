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
def test_demo_minutes_bench_accounts_for_the_run(tmp_path):
    """Every phase is timed, the phases add up to the total, and the recipe's steps are counted."""
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, "bench/demo_minutes.py", "--baseline-steps", "1", "--json", str(out),
        "--num_train_epochs", "1", "--demo_num_images", "24", "--image_size", "64",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    phases = report["phases_s"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["training steps"] > 0
    assert phases["evaluation"] > 0 and phases["checkpoint saves"] > 0  # demo.yaml evaluates and saves every epoch
    assert report["steps"] >= 1 and report["recipe_steps_per_s"] > 0 and report["baseline_steps_per_s"] > 0
    assert f"{sum(phases.values()):>10.1f}" in result.stdout


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


@pytest.mark.slow
def test_profile_step_groups_every_operator_into_a_family(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "bench/profile_step.py", "--device", "cpu", "--model", "tiny", "--image-size", "64"]
    cmd += ["--batch-size", "2", "--variant", "recipe", "--fp32", "--steps", "1", "--warmup", "1", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch " in result.stdout and "transformers " in result.stdout  # versions next to the table
    report = json.loads(out.read_text())
    families = report["families_ms"]
    for family in ("attention (matmuls + softmax)", "linear layers", "convolutions", "normalisation"):
        assert families[family].get("forward", 0) > 0 and families[family].get("backward", 0) > 0, family
    loss = families["loss (incl. full-resolution upsampling)"]
    assert loss.get("forward", 0) > 0 and loss.get("backward", 0) > 0  # backward nodes traced to the loss
    assert families["optimizer"].get("optimizer", 0) > 0 and set(families["optimizer"]) == {"optimizer"}
    by_op = {row["op"]: row["family"] for row in report["top_ops"]}
    assert by_op.get("aten::mkldnn_convolution", "convolutions") == "convolutions"
    assert all(f != "linear layers" for op, f in by_op.items() if "upsample" in op)


@pytest.mark.slow
def test_inference_bench_masks_equal_the_pipeline_masks(tmp_path):
    """cxrseg predict and evaluate against a plain pipeline loop, tiny: every mask pixel equal, every area equal."""
    out = tmp_path / "inference.json"
    cmd = [sys.executable, "bench/inference.py", "--device", "cpu", "--model", "tiny", "--image-size", "64"]
    cmd += ["--num-images", "6", "--batch-size", "4", "--num-workers", "1", "--repeats", "1", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    paths = {"pipeline", "predict fp32", "predict fp32, masks only", "pipeline + Dice", "evaluate fp32"}
    assert set(report["images_per_s"]) == paths
    masks = report["masks"]["fp32"]
    assert masks["pixels"] == 6 * 64 * 64
    assert 0.2 < masks["foreground_fraction"] < 0.8  # both classes present: the comparison is not vacuous
    assert masks["identical"] and masks["differing_pixels"] == 0
    assert masks["evaluate_areas_match"]
