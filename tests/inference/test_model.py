from __future__ import annotations

import json

import pytest
import torch
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from cxrseg.labels import IGNORE_INDEX, PNEUMOTHORAX
from cxrseg.model import AuxiliaryLogits, build_image_processor, build_model
from tests.conftest import TINY_MODEL_CONFIG


def test_a_150_class_checkpoint_is_fine_tuned_to_two_classes(tmp_path):
    """A local folder laid out like openmmlab/upernet-swin-* on the Hub: config, weights, preprocessor."""
    ade = UperNetForSemanticSegmentation(UperNetConfig(**TINY_MODEL_CONFIG, num_labels=150))
    ade.save_pretrained(tmp_path / "hub")
    build_image_processor(512).save_pretrained(tmp_path / "hub")
    assert len(json.loads((tmp_path / "hub/config.json").read_text())["id2label"]) == 150

    model, processor = build_model(str(tmp_path / "hub"), None, PNEUMOTHORAX, image_size=64)
    assert model.config.id2label == {0: "background", 1: "pneumothorax"}
    assert model.decode_head.classifier.out_channels == 2
    assert processor.size == {"height": 64, "width": 64}
    pretrained = ade.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, pretrained[key]), key  # backbone weights really loaded
    # and it trains: a few steps reduce the loss on a fixed batch
    pixels, labels = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 20:40, 20:40] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_batch_of_one_trains_and_keeps_state_dict_keys():
    model, _ = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, image_size=64)
    model.train()
    out = model(pixel_values=torch.randn(1, 3, 64, 64))  # PSP's 1x1 pooling: one value per channel
    assert out.logits.shape == (1, 2, 64, 64)
    plain = UperNetForSemanticSegmentation(model.config)
    assert plain.state_dict().keys() == model.state_dict().keys()
    assert model.config.loss_ignore_index == IGNORE_INDEX


def test_auxiliary_logits_come_from_the_same_forward():
    model, _ = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, image_size=64)
    model.eval()
    hook = AuxiliaryLogits(model)
    pixels = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 2, (2, 64, 64))
    with torch.no_grad():
        builtin = model(pixel_values=pixels, labels=labels)
        main = torch.nn.functional.cross_entropy(builtin.logits, labels)
        auxiliary = torch.nn.functional.cross_entropy(hook.pop((64, 64)), labels)
    # UperNet's own loss is main + auxiliary_loss_weight * aux: our captured logits reproduce it
    expected = main + model.config.auxiliary_loss_weight * auxiliary
    torch.testing.assert_close(builtin.loss, expected)


def test_the_dry_training_step_changes_nothing_and_names_a_model_that_cannot_train():
    """check_model_runs trains a copy one step: the model's tensors (BatchNorm statistics included), its mode and
    torch's random stream are as before; a model whose heads do not fit fails as one RecipeError naming it."""
    from cxrseg.errors import RecipeError
    from cxrseg.model import check_model_runs

    torch.manual_seed(3)
    model, _ = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, 32)
    model.eval()
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    state = torch.random.get_rng_state()
    check_model_runs(model, 32, "model_config")
    assert not model.training
    assert all(torch.equal(before[key], tensor) for key, tensor in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(parameter.grad is None for parameter in model.parameters())
    config = {**TINY_MODEL_CONFIG, "backbone_config": {**TINY_MODEL_CONFIG["backbone_config"], "num_heads": [3] * 4}}
    unfit, _ = build_model(None, config, PNEUMOTHORAX, 32)  # builds; 3 heads do not divide a width of 16
    with pytest.raises(RecipeError, match="model_config cannot run on 32x32 images"):
        check_model_runs(unfit, 32, "model_config")
