#!/usr/bin/env python
"""Check that torch.compile keeps the auxiliary-head hook working (the Trainer's torch_compile path).

    python bench/compile_check.py --device cuda

Compares eager and compiled losses on the same batch (eval mode, so dropout/drop-path do not differ) and checks
that, in training mode, the compiled model still hands the aux logits to the hook and gradients reach the aux head.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS  # noqa: E402

from cxrseg.labels import PNEUMOTHORAX  # noqa: E402
from cxrseg.model import AuxiliaryLogits, build_model  # noqa: E402
from cxrseg.training.losses import DiceCELoss  # noqa: E402


def loss_of(forward, hook, loss_fn, pixels, labels):
    with torch.autocast(pixels.device.type, dtype=torch.bfloat16):
        logits = forward(pixel_values=pixels).logits
        auxiliary = hook.pop(labels.shape[-2:])
        assert auxiliary is not None, "the hook saw no auxiliary logits"
        return loss_fn(logits, labels) + 0.4 * loss_fn(auxiliary, labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="swin-tiny", choices=sorted(MODELS))
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, _ = build_model(None, MODELS[args.model], PNEUMOTHORAX, args.image_size)
    model.to(device)
    hook = AuxiliaryLogits(model)
    loss_fn = DiceCELoss([0.5, 50.0])
    pixels = torch.randn(4, 3, args.image_size, args.image_size, device=device)
    labels = (torch.rand(4, args.image_size, args.image_size, device=device) > 0.97).long()
    compiled = torch.compile(model)
    model.eval()
    with torch.no_grad():
        eager_loss = loss_of(model, hook, loss_fn, pixels, labels).item()
        compiled_loss = loss_of(compiled, hook, loss_fn, pixels, labels).item()
    print(f"eval loss: eager {eager_loss:.5f}  compiled {compiled_loss:.5f}")
    assert abs(eager_loss - compiled_loss) < 2e-2 * abs(eager_loss), "compiled loss differs"
    model.train()
    loss_of(compiled, hook, loss_fn, pixels, labels).backward()
    grad = model.auxiliary_head.classifier.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "no gradient reached the auxiliary head"
    print("train: hook captured aux logits under torch.compile; aux head gradient norm", grad.norm().item())


if __name__ == "__main__":
    main()
