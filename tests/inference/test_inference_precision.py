"""The speed options of evaluate/predict/visualize: --precision and --compile reach the model, bf16 autocast gives
probabilities close to fp32's, and --num-workers defaults to no reader processes on the CPU."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from cxrseg.cli import main
from cxrseg.cli.model_options import add_model_arguments, load_model, run_options
from cxrseg.imageio.images import read_image, write_png
from cxrseg.inference.segmenter import main_logits
from cxrseg.synthetic import synthetic_radiograph
from tests.conftest import save_tiny_model


def test_precision_and_compile_options_reach_the_segmenter(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    default = load_model(parser.parse_args(["--model", str(model_dir), "--device", "cpu"]))
    assert (default.precision, default.compile) == ("fp32", False)
    chosen = load_model(
        parser.parse_args(["--model", str(model_dir), "--device", "cpu", "--precision", "bf16", "--compile"])
    )
    assert (chosen.precision, chosen.compile) == ("bf16", True)


def test_num_workers_default_to_none_on_the_cpu_and_two_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)

    def workers(*argv: str) -> int:
        return run_options(parser.parse_args(["--model", "m", *argv]))["num_workers"]

    assert workers("--device", "cpu") == 0
    assert workers("--device", "cuda") == 2
    assert workers("--device", "cpu", "--num-workers", "3") == 3
    assert workers("--device", "cuda:1", "--num-workers", "0") == 0


def test_bf16_predict_probabilities_stay_within_two_percent_of_fp32(tmp_path):
    """bf16 autocast keeps 8 significant bits; the stated tolerance on probabilities is 0.02 (5 grey levels of the
    8-bit probability PNGs), and bf16 must really run (some level differs)."""
    model_dir = save_tiny_model(tmp_path / "model", seed=3)
    inputs = tmp_path / "inputs"
    for seed in range(3):
        write_png(inputs / f"x{seed}.png", synthetic_radiograph(seed, 64)[0])
    levels = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["predict", "--model", str(model_dir), "--input", str(inputs), "--out", str(out)]
        code = main([*args, "--save-probabilities", "--num-workers", "0", "--precision", precision])
        assert code == 0
        levels[precision] = np.stack([read_image(out / "probabilities" / f"x{s}.png") for s in range(3)])
    difference = np.abs(levels["fp32"].astype(int) - levels["bf16"].astype(int))
    assert difference.max() <= 5
    assert difference.max() > 0


def test_the_compiled_path_pads_a_smaller_batch_to_the_compiled_size(tmp_path, caplog):
    """A compiled graph is specialised to its batch size, so a run's last, smaller batch is padded to the largest
    batch seen and cut back: one graph, and the same probabilities as unpadded."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    segmenter = load_model(parser.parse_args(["--model", str(save_tiny_model(tmp_path)), "--device", "cpu"]))
    seen: list[int] = []

    def graph(model, pixel_values):  # stands in for torch.compile(main_logits): the padding is the segmenter's
        seen.append(pixel_values.shape[0])
        return main_logits(model, pixel_values)

    segmenter._main_logits = graph
    pixels = torch.randn(4, 3, 64, 64)
    with caplog.at_level(logging.INFO, logger="cxrseg.inference.segmenter"):
        full = segmenter.probabilities(pixels)
        last = segmenter.probabilities(pixels[:3])
    assert seen == [4, 4] and last.shape[0] == 3
    assert [r.getMessage()[:32] for r in caplog.records] == ["Compiling the model for batches "]  # once: one graph
    torch.testing.assert_close(last, full[:3], rtol=0, atol=1e-6)
