"""Swin's attention implementation: SDPA (the default) against the explicit matmuls, in fp32 and bf16, and models
that stay loadable by plain transformers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import UperNetForSemanticSegmentation

from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.model import DEFAULT_ATTENTION, build_model, set_attention
from tests.conftest import TINY_MODEL_CONFIG

# Two blocks per stage, so every other block attends in shifted windows (the cyclic-shift mask joins the relative
# position bias in SDPA's attn_mask), and several heads.
SHIFTED_CONFIG = {
    **TINY_MODEL_CONFIG,
    "backbone_config": {**TINY_MODEL_CONFIG["backbone_config"], "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
}


def attention_pair() -> tuple[UperNetForSemanticSegmentation, UperNetForSemanticSegmentation]:
    """(SDPA model, eager copy) with the same weights; the relative position bias tables are drawn with std 1
    instead of the initial 0.02, so that the bias really shapes the attention being compared."""
    torch.manual_seed(0)
    sdpa, _ = build_model(None, SHIFTED_CONFIG, PNEUMOTHORAX, image_size=64)
    for name, parameter in sdpa.named_parameters():
        if name.endswith("relative_position_bias_table"):
            torch.nn.init.normal_(parameter, std=1.0)
    eager = copy.deepcopy(sdpa)
    set_attention(eager, "eager")
    return sdpa, eager


def features(model: UperNetForSemanticSegmentation, pixels: torch.Tensor) -> torch.Tensor:
    """Every Swin stage's output (LayerNorm'd, so unit scale) and the logits, flattened into one float32 vector."""
    maps = model.backbone(pixels).feature_maps
    return torch.cat([m.float().flatten() for m in (*maps, model.decode_head(maps))])


def test_sdpa_is_the_default_and_what_build_and_load_give(tmp_path):
    model, processor = build_model(None, SHIFTED_CONFIG, PNEUMOTHORAX, image_size=64)
    assert DEFAULT_ATTENTION == "sdpa"
    assert model.backbone.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    segmenter = load_segmenter(tmp_path, device="cpu")
    assert segmenter.model.backbone.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="flash"):
        set_attention(model, "flash")


def test_sdpa_model_state_dict_loads_with_plain_transformers(tmp_path):
    model, _ = build_model(None, SHIFTED_CONFIG, PNEUMOTHORAX, image_size=64)
    model.save_pretrained(tmp_path)
    plain = UperNetForSemanticSegmentation.from_pretrained(tmp_path, attn_implementation="eager")
    saved = model.state_dict()
    assert plain.state_dict().keys() == saved.keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, saved[key]), key
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(features(plain.eval(), pixels), features(model.eval(), pixels), rtol=0, atol=1e-5)


def test_sdpa_equals_eager_in_fp32_forward_and_backward():
    """fp32: outputs within 1e-5 (unit-scale features), gradients within 1e-5 of the largest gradient."""
    sdpa, eager = attention_pair()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(features(sdpa.eval(), pixels), features(eager.eval(), pixels), rtol=0, atol=1e-5)
    for model in (sdpa, eager):
        features(model.train(), pixels).pow(2).mean().backward()
    grads = {name: p.grad for name, p in eager.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    assert any("relative_position_bias_table" in name for name in grads)  # the bias is learnt through SDPA too
    for name, parameter in sdpa.named_parameters():
        if name in grads:
            torch.testing.assert_close(parameter.grad, grads[name], rtol=0, atol=1e-5 * scale, msg=name)


def test_sdpa_in_bf16_is_as_close_to_fp32_as_eager_in_bf16():
    """bf16 autocast keeps 8 significant bits, so neither implementation matches fp32 to 1e-5. The tolerance:
    SDPA's largest error on the unit-scale features stays under 0.1 and its mean error within 1.25x eager's."""
    sdpa, eager = attention_pair()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = features(eager.eval(), pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sdpa_bf16, eager_bf16 = features(sdpa.eval(), pixels), features(eager, pixels)
    sdpa_error, eager_error = (sdpa_bf16 - reference).abs(), (eager_bf16 - reference).abs()
    assert sdpa_error.max() < 0.1
    assert sdpa_error.mean() <= 1.25 * eager_error.mean()
    assert eager_error.mean() > 1e-4  # bf16 really ran


def test_config_json_of_a_model_cxrseg_writes_names_no_attention(tmp_path):
    model, _ = build_model(None, SHIFTED_CONFIG, PNEUMOTHORAX, image_size=64, attention="eager")
    assert model.backbone.config._attn_implementation == "eager"
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "_attn_implementation" not in config["backbone_config"]
    assert UperNetForSemanticSegmentation.from_pretrained(tmp_path).backbone.config._attn_implementation == "sdpa"
