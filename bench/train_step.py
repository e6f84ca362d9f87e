#!/usr/bin/env python
"""Training-step throughput of UperNet-Swin: a reference-style fp32 loop against our optimisations, in one run.

    python bench/train_step.py --device cuda --model swin-base --image-size 512 --batch-size 16
    python bench/train_step.py --device cpu --model tiny --image-size 64 --batch-size 2 --steps 1 --warmup 0

Each variant times full steps (forward, loss on both heads, backward, optimizer) on random data and prints
images/s, peak memory, achieved FLOP/s (counted once with torch.utils.flop_counter) and, on CUDA, the fraction of a
bf16 matmul ceiling measured in the same run. Ratios are against the first (fp32 reference-style) variant.
Variants are cumulative: fp32 reference (batch 4 as the reference repo, built-in loss, per-batch host metrics) →
bf16 autocast → +TF32 → +channels-last → +fused AdamW → +torch.compile; "recipe" is what recipe/balanced.yaml uses.
Swin's attention is cxrseg's default (SDPA) unless a variant says "eager-attention". The torch and transformers
versions are printed and saved with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # the library, and tests/ for the one tiny model config
from cxrseg.labels import PNEUMOTHORAX  # noqa: E402
from cxrseg.model import DEFAULT_ATTENTION, AuxiliaryLogits, build_model  # noqa: E402
from cxrseg.training.losses import DiceCELoss  # noqa: E402
from tests.conftest import TINY_MODEL_CONFIG  # noqa: E402

MODELS = {
    # openmmlab/upernet-swin-base's architecture (121.3M parameters), randomly initialised: throughput only.
    "swin-base": {
        "backbone_config": {
            "model_type": "swin",
            "embed_dim": 128,
            "depths": [2, 2, 18, 2],
            "num_heads": [4, 8, 16, 32],
            "window_size": 12,
            "image_size": 384,
            "drop_path_rate": 0.3,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        "hidden_size": 512,
        "auxiliary_in_channels": 512,
    },
    "swin-tiny": {
        "backbone_config": {
            "model_type": "swin",
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "image_size": 224,
            "drop_path_rate": 0.2,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        "hidden_size": 512,
        "auxiliary_in_channels": 384,
    },
    "demo": yaml.safe_load((ROOT / "recipe" / "demo.yaml").read_text())["model_config"],  # recipe/demo.yaml's
    "tiny": TINY_MODEL_CONFIG,  # the tests' tiny model
}

VARIANTS = {
    "fp32-reference": dict(bf16=False, tf32=False, channels_last=False, fused=False, compile=False, reference=True),
    "bf16": dict(bf16=True, tf32=False, channels_last=False, fused=False, compile=False),
    "bf16+tf32": dict(bf16=True, tf32=True, channels_last=False, fused=False, compile=False),
    "+channels-last": dict(bf16=True, tf32=True, channels_last=True, fused=False, compile=False),
    "+fused-adamw": dict(bf16=True, tf32=True, channels_last=False, fused=True, compile=False),
    "+compile": dict(bf16=True, tf32=True, channels_last=False, fused=True, compile=True),
    "+compile+channels-last": dict(bf16=True, tf32=True, channels_last=True, fused=True, compile=True),
    # what recipe/balanced.yaml runs (the measurements decide whether channels-last and compile join it)
    "recipe": dict(bf16=True, tf32=True, channels_last=False, fused=True, compile=False),
    "recipe+checkpointing": dict(
        bf16=True, tf32=True, channels_last=False, fused=True, compile=False, checkpointing=True
    ),
    # Swin's attention: every variant above runs "sdpa" (cxrseg's default); these two run the explicit matmuls
    "recipe+eager-attention": dict(
        bf16=True, tf32=True, channels_last=False, fused=True, compile=False, attention="eager"
    ),
    "+compile+eager-attention": dict(
        bf16=True, tf32=True, channels_last=False, fused=True, compile=True, attention="eager"
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (8192³ on CUDA, 1024³ on CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def step_flops(model, loss_fn, hook, pixels, labels) -> float:
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(model(pixel_values=pixels).logits, labels)
        loss = loss + 0.4 * loss_fn(hook.pop(labels.shape[-2:]), labels)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def versions() -> dict[str, str]:
    """The library versions every figure is recorded with (the GPU machine may have its own torch)."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


class TrainingStep:
    """One full training step of a variant, callable repeatedly on the same random batch.

    The step's phases run under ``torch.profiler.record_function`` scopes (:data:`PHASES`), which
    ``bench/profile_step.py`` reads; outside a profiler they cost nothing measurable.
    """

    def __init__(
        self, model_name: str | dict, image_size: int, batch_size: int, spec: dict, device: torch.device
    ) -> None:
        """model_name: a key of :data:`MODELS`, or a UperNet model config (``model_config`` of a recipe)."""
        torch.backends.cuda.matmul.allow_tf32 = spec["tf32"]
        torch.backends.cudnn.allow_tf32 = spec["tf32"]
        torch.manual_seed(0)
        self.spec = spec
        self.batch_size = 4 if spec.get("reference") else batch_size
        attention = spec.get("attention", DEFAULT_ATTENTION)
        config = MODELS[model_name] if isinstance(model_name, str) else model_name
        model, _ = build_model(None, config, PNEUMOTHORAX, image_size, attention)
        model.to(device).train()
        if spec.get("checkpointing"):
            enable = getattr(model.backbone, "activation_checkpointing_enable", None)
            (enable or model.backbone.gradient_checkpointing_enable)()
        memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
        self.model = model.to(memory_format=memory_format)
        self.hook = AuxiliaryLogits(model)
        self.loss_fn = DiceCELoss(class_weights=[0.5, 54.0]).to(device)
        fused = spec["fused"] and device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        self.forward = torch.compile(model) if spec["compile"] else model
        shape = (self.batch_size, 3, image_size, image_size)
        self.pixels = torch.randn(shape, device=device).to(memory_format=memory_format)
        self.labels = (torch.rand(self.batch_size, image_size, image_size, device=device) > 0.98).long()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["bf16"] else nullcontext()

    def __call__(self) -> None:
        spec, labels = self.spec, self.labels
        with self.autocast:
            with record_function("forward"):
                if spec.get("reference"):  # the reference loop: built-in CE inside the forward
                    out = self.forward(pixel_values=self.pixels, labels=labels)
                else:
                    logits = self.forward(pixel_values=self.pixels).logits
            with record_function("loss"):
                if spec.get("reference"):
                    loss = out.loss
                else:
                    auxiliary = self.hook.pop(labels.shape[-2:])
                    loss = self.loss_fn(logits, labels) + 0.4 * self.loss_fn(auxiliary, labels)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if spec.get("reference"):  # ... then Dice of the batch on the host
            pred = out.logits.argmax(1).cpu().numpy()
            truth = labels.cpu().numpy()
            _ = (2 * (pred & truth).sum() + 1) / (pred.sum() + truth.sum() + 1)


PHASES = ("forward", "loss", "backward", "optimizer")
"""The record_function scopes of :class:`TrainingStep` (the reference variant's built-in loss is in "forward")."""


def run_variant(name, spec, args, device, flops_per_image):
    step = TrainingStep(args.model, args.image_size, args.batch_size, spec, device)
    for _ in range(args.warmup + (2 if spec["compile"] else 0)):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    batch = step.batch_size
    images_per_s = batch * args.steps / elapsed
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "variant": name,
        "batch_size": batch,
        "attention": spec.get("attention", DEFAULT_ATTENTION),
        "images_per_s": images_per_s,
        "peak_memory_gib": peak / 2**30,
        "tflops": images_per_s * flops_per_image / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="swin-base")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="Comma-separated subset of: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--json", help="Also write the results here.")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")

    model, _ = build_model(None, MODELS[args.model], PNEUMOTHORAX, args.image_size)
    model.to(device).train()
    pixels = torch.randn(2, 3, args.image_size, args.image_size, device=device)
    labels = torch.zeros(2, args.image_size, args.image_size, dtype=torch.long, device=device)
    flops_per_image = step_flops(model, DiceCELoss().to(device), AuxiliaryLogits(model), pixels, labels) / 2
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    ceiling = matmul_ceiling(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stack = versions()
    print(
        f"{name}, torch {stack['torch']}, transformers {stack['transformers']}\n"
        f"{args.model} ({params:.1f}M params), {args.image_size}², training step "
        f"{flops_per_image / 1e12:.3f} TFLOP/image; bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s "
        f"→ {ceiling / flops_per_image:.1f} images/s at most"
    )
    results = []
    for variant in names:
        row = run_variant(variant, VARIANTS[variant], args, device, flops_per_image)
        row["ceiling_fraction"] = row["tflops"] * 1e12 / ceiling
        row["vs_reference"] = row["images_per_s"] / results[0]["images_per_s"] if results else 1.0
        results.append(row)
        print(
            f"{variant:>24}  batch {row['batch_size']:>3}  {row['images_per_s']:8.2f} img/s  "
            f"{row['vs_reference']:5.2f}x  peak {row['peak_memory_gib']:6.2f} GiB  {row['tflops']:7.1f} TFLOP/s  "
            f"{100 * row['ceiling_fraction']:5.1f}% of ceiling",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": name,
                    **stack,
                    "model": args.model,
                    "image_size": args.image_size,
                    "flops_per_image": flops_per_image,
                    "ceiling_flops": ceiling,
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
