"""Inference: loading a model folder or Hub id, the same preprocessing as training's evaluation, hflip TTA, masks
at the original size under post-processing, image reading, feature maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import UperNetForSemanticSegmentation

from cxrseg.data.dataset import make_transform
from cxrseg.errors import ModelLoadError
from cxrseg.evaluation.evaluate import default_out_dir
from cxrseg.inference.segmenter import feature_maps, load_segmenter
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.postprocessing.rules import PostProcess
from tests.conftest import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_load_segmenter_reads_the_folder(model_dir):
    segmenter = load_segmenter(model_dir, device="cpu")
    assert segmenter.labels == PNEUMOTHORAX
    assert segmenter.output_names == ("pneumothorax",)
    assert segmenter.image_size == 64 and segmenter.preprocessor.size == (64, 64)
    assert segmenter.is_local and segmenter.model_dir == model_dir
    assert segmenter.postprocess is None and segmenter.rule == PostProcess()
    assert segmenter.splits is None
    assert not segmenter.model.training


def test_hub_id_is_downloaded_once_with_only_the_model_files(model_dir, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):  # the Hub network boundary
        calls.append((repo_id, allow_patterns))
        return str(model_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    segmenter = load_segmenter("someone/cxr-model", device="cpu")
    assert calls[0][0] == "someone/cxr-model"
    assert {"config.json", "model.safetensors", "postprocess.json", "splits.json"} <= set(calls[0][1])
    assert not any("checkpoint" in pattern for pattern in calls[0][1])
    assert not segmenter.is_local and segmenter.source == "someone/cxr-model"
    assert default_out_dir(segmenter, "val") == Path("evaluation/someone--cxr-model/val")


def test_unknown_model_is_one_clear_error(tmp_path, monkeypatch):
    def offline(repo_id, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(ModelLoadError, match="'nobody/nothing' is neither a local model folder"):
        load_segmenter("nobody/nothing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_segmenter(tmp_path)


def test_preprocessing_is_training_evaluation_and_probabilities_come_back_at_original_size(model_dir):
    segmenter = load_segmenter(model_dir, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 80), dtype=np.uint8)  # not square, not the working size
    # The validation transform of training, fed like the datasets library feeds it (a PIL image).
    transform = make_transform(PNEUMOTHORAX, 64, segmenter.preprocessor.mean, segmenter.preprocessor.std)
    expected_inputs = transform({"image": [Image.fromarray(image)], "mask": [np.zeros((50, 80), np.uint8)]})
    pixel_values = segmenter.preprocessor(image)
    torch.testing.assert_close(pixel_values, expected_inputs["pixel_values"][0], rtol=0, atol=0)

    (probs,) = segmenter.predict([image])
    with torch.no_grad():
        logits = segmenter.model(pixel_values=pixel_values.unsqueeze(0)).logits
    expected = F.interpolate(logits.softmax(1)[:, 1:], size=(50, 80), mode="bilinear", align_corners=False)[0]
    assert probs.shape == (1, 50, 80) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)


def test_probabilities_equal_the_plain_transformers_forward(model_dir):
    """Channels-last weights and inputs, SDPA attention and no auxiliary head change nothing beyond round-off."""
    segmenter = load_segmenter(model_dir, device="cpu")
    weight = segmenter.model.decode_head.fpn_bottleneck.conv.weight  # a 3x3 convolution
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    plain = UperNetForSemanticSegmentation.from_pretrained(model_dir).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain(pixel_values=pixel_values).logits.softmax(dim=1)[:, 1:]
    torch.testing.assert_close(segmenter.probabilities(pixel_values), expected, atol=1e-5, rtol=0)


def test_hflip_tta_is_the_mean_of_the_image_and_its_mirror(model_dir):
    segmenter = load_segmenter(model_dir, device="cpu")
    pixel_values = torch.randn(2, 3, 64, 64)
    plain = segmenter.probabilities(pixel_values)
    mirrored = segmenter.probabilities(pixel_values.flip(-1)).flip(-1)
    tta = segmenter.probabilities(pixel_values, tta="hflip")
    torch.testing.assert_close(tta, (plain + mirrored) / 2)
    assert not torch.allclose(tta, plain, atol=1e-4)  # the tiny model is not mirror-symmetric
    with pytest.raises(ValueError, match="Unknown TTA"):
        segmenter.probabilities(pixel_values, tta="vflip")


def test_masks_gate_at_the_working_size_and_threshold_at_the_original_size(model_dir):
    (model_dir / "postprocess.json").write_text(
        json.dumps({"top_threshold": 0.75, "min_area": 2000, "bottom_threshold": 0.3, "image_size": 1024})
    )
    try:
        segmenter = load_segmenter(model_dir, device="cpu")
        assert segmenter.postprocess == PostProcess(0.75, 8, 0.3, image_size=64)  # 2000 * (64/1024)² = 7.8 → 8
        assert load_segmenter(model_dir, use_postprocess=False).postprocess is None
    finally:
        (model_dir / "postprocess.json").unlink()
    probs = torch.full((3, 64, 64), 0.2)
    probs[0, :3, :3] = 0.8  # 9 confident pixels: kept
    probs[1, :2, :3] = 0.8  # 6: dropped
    probs[2, 10:20, 10:20] = 0.5  # no confident pixel: dropped although above the bottom threshold
    masks = segmenter.masks(probs)
    np.testing.assert_array_equal(masks, segmenter.postprocess.apply(probs))
    assert masks[0].sum() == 9 and masks[1].sum() == 0 and masks[2].sum() == 0

    at_size = segmenter.resize_probabilities(probs, (128, 100))
    big = segmenter.masks(probs, at_size)
    assert big.shape == (3, 128, 100) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[0], (at_size[0] >= 0.3).numpy())
    assert big[0].any() and not big[1].any() and not big[2].any()


def test_feature_maps_cover_every_swin_stage_and_the_heads(model_dir):
    segmenter = load_segmenter(model_dir, device="cpu")
    features, probs = feature_maps(segmenter, np.full((70, 90), 128, np.uint8))
    names = [name for name, _ in features]
    assert names == [
        "Swin stage1",
        "Swin stage2",
        "Swin stage3",
        "Swin stage4",
        "UperNet PPM",
        "UperNet FPN 1/4",
        "UperNet FPN 1/8",
        "UperNet FPN 1/16",
        "UperNet fused",
        "auxiliary FCN",
    ]
    shapes = dict((name, tuple(value.shape)) for name, value in features)
    assert shapes["Swin stage1"] == (16, 16, 16) and shapes["Swin stage4"] == (128, 2, 2)
    assert shapes["UperNet fused"] == (16, 16, 16)
    assert probs.shape == (1, 64, 64)
    assert not segmenter.model.backbone._forward_hooks  # hooks removed
