"""``cxrseg env``: what this machine can train on — library versions, CUDA/cuDNN/NCCL, each GPU, a forward and
backward pass on each device, and what ``accelerate launch`` is configured to do. Exit code 1 when a requested
device is unusable."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

PACKAGES = (
    "cxrseg",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "albumentations",
    "huggingface-hub",
    "safetensors",
    "pydicom",
    "wandb",
    "tensorboard",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("env", help="Versions, GPUs, a forward/backward test per device, accelerate config.")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="Device(s) that must work: auto (the CPU and every GPU found; default), cpu, or cuda (fails without a "
        "usable GPU).",
    )
    parser.set_defaults(func=run)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def smoke_test(device: torch.device, dtype: torch.dtype | None = None) -> float:
    """One forward and backward pass of a small conv net on ``device`` (under autocast to ``dtype`` if given).

    Returns the seconds taken; raises if the device fails or a gradient is missing or not finite.
    """
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).to(device)
    images = torch.randn(2, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 2, (2, 32, 32), generator=generator).to(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for name, parameter in model.named_parameters():
        if parameter.grad is None or not torch.isfinite(parameter.grad).all():
            raise RuntimeError(f"gradient of {name} is missing or not finite")
    return time.perf_counter() - start


def _has_bf16(device: torch.device) -> bool:
    """Native bf16 on a CUDA device: compute capability 8.0 (Ampere) or newer. False on CPU (not tested there)."""
    return device.type == "cuda" and torch.cuda.get_device_properties(device).major >= 8


def _accelerate_config() -> list[str]:
    from accelerate.commands.config import default_config_file
    from accelerate.commands.config.config_args import load_config_from_file

    if not default_config_file or not os.path.isfile(default_config_file):
        return [
            f"  no default config ({default_config_file}): `accelerate launch` without --config_file starts one "
            "process per visible GPU (one on CPU); pass --config_file accelerate_configs/<strategy>.yaml"
        ]
    config = load_config_from_file(default_config_file)
    lines = [f"  default config: {default_config_file}"]
    for key in ("distributed_type", "num_machines", "num_processes", "gpu_ids", "mixed_precision", "use_cpu"):
        value = getattr(config, key, None)
        lines.append(f"  {key}: {getattr(value, 'value', value)}")
    if getattr(config, "mixed_precision", "no") not in ("no", None):
        lines.append("  note: a mixed_precision here overrides recipes that set mixed_precision: 'no'")
    return lines


def run(args: argparse.Namespace) -> int:
    lines = [f"python: {platform.python_version()} ({sys.executable})", f"platform: {platform.platform()}"]
    lines += [f"{package}: {_version(package)}" for package in PACKAGES]
    cuda = torch.cuda.is_available()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda and torch.distributed.is_nccl_available() else None
    lines += [
        f"torch CUDA build: {torch.version.cuda or 'none (CPU-only build)'}",
        f"cuDNN: {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'not available'}",
        f"NCCL: {nccl or 'not available'}",
        f"gloo: {'available' if torch.distributed.is_gloo_available() else 'not available'}",
        f"GPUs visible: {torch.cuda.device_count() if cuda else 0}",
    ]
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    problems = []
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = _has_bf16(torch.device("cuda", index))
            lines.append(
                f"  cuda:{index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                f"{props.major}.{props.minor}, bf16 {'yes' if bf16 else 'no'}"
            )
            if args.device in ("auto", "cuda"):
                devices.append(torch.device("cuda", index))
    elif args.device == "cuda":
        problems.append(
            f"--device cuda: no usable CUDA GPU (torch.cuda.is_available() is False; torch {torch.__version__} "
            f"built for CUDA {torch.version.cuda or 'none, a CPU-only build'}). Check nvidia-smi, "
            "CUDA_VISIBLE_DEVICES, and install a CUDA build of torch (see requirements.txt)."
        )
    lines.append("forward + backward:")
    for device in devices:
        for precision in (None, torch.bfloat16) if _has_bf16(device) else (None,):
            label = f"{device} {'bf16 autocast' if precision else 'fp32'}"
            try:
                lines.append(f"  {label}: ok ({smoke_test(device, precision) * 1000:.1f} ms)")
            except Exception as error:  # report every device, then fail
                lines.append(f"  {label}: FAILED ({type(error).__name__}: {error})")
                problems.append(f"{label} failed: {error}")
    lines.append("accelerate:")
    lines += _accelerate_config()
    print("\n".join(lines))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0
