"""channels_last: the network trains with NHWC convolution weights and the run is the one the default layout gives,
within float rounding; the saved model is a normal one."""

from __future__ import annotations

import json

import torch
from transformers import TrainerCallback, UperNetForSemanticSegmentation

from cxrseg.config import parse_recipe
from cxrseg.synthetic import make_demo_data
from cxrseg.training.train import train
from tests.conftest import TINY_MODEL_CONFIG


class RecordLayout(TrainerCallback):
    """Whether every 4-d weight was channels-last at each step."""

    def __init__(self) -> None:
        self.layouts = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        weights = [p for p in model.parameters() if p.dim() == 4]
        self.layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in weights))


def test_channels_last_training_equals_the_default_layout_within_rounding(tmp_path):
    data = make_demo_data(tmp_path / "data", num_images=8, size=64, seed=0)
    runs = {}
    for channels_last in (False, True):
        out = tmp_path / f"channels_last_{channels_last}"
        recipe = parse_recipe([
            "--config", "recipe/demo.yaml", "--generate_demo_data", "false", "--data_dir", str(data),
            "--output_dir", str(out), "--model_config", json.dumps(TINY_MODEL_CONFIG), "--image_size", "64",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--mixed_precision", "no",
            "--channels_last", str(channels_last).lower(), "--augmentation", "none",
        ])  # fmt: skip
        layout = RecordLayout()
        metrics = train(recipe, callbacks=[layout])
        runs[channels_last] = (metrics, UperNetForSemanticSegmentation.from_pretrained(out).state_dict(), layout)
    (plain, plain_weights, plain_layout), (nhwc, nhwc_weights, nhwc_layout) = runs[False], runs[True]
    assert nhwc_layout.layouts and all(nhwc_layout.layouts)  # every step ran with NHWC weights
    assert not any(plain_layout.layouts)
    assert plain_weights.keys() == nhwc_weights.keys()
    for key, tensor in plain_weights.items():  # the same training, up to float rounding; saved as usual
        torch.testing.assert_close(nhwc_weights[key], tensor, rtol=1e-3, atol=1e-4, msg=key)
    assert abs(nhwc["eval_loss"] - plain["eval_loss"]) < 1e-3
