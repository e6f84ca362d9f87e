#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over the steps of ``bench/train_step.py``, grouped by family.

    python bench/profile_step.py --device cuda --model swin-base --image-size 512 --batch-size 32 --variant +compile
    python bench/profile_step.py --device cpu --model swin-tiny --image-size 128 --batch-size 2 --fp32

Every operator's *self* time is summed per family: GPU kernel time on CUDA (each kernel is charged to the operator
that launched it), operator CPU time on the CPU. An operator's family comes from its phase and its name:

* optimizer: anything under the step's ``optimizer`` scope;
* loss (incl. its full-resolution upsampling): the ``loss`` scope (upsampling the auxiliary logits, softmax/CE,
  Dice) and the backward nodes of those operators (matched by autograd sequence number);
* attention (matmuls + softmax): SDPA / fused attention kernels, batched matmuls (``bmm``) and softmax of the model;
* linear layers: ``mm``/``addmm``/``linear`` and GEMM templates (Swin's q/k/v/o projections, MLPs, patch merging);
* convolutions: UperNet's head (PPM, FPN, fuse, auxiliary FCN) and Swin's 4x4 patch embedding;
* normalisation: LayerNorm, BatchNorm; upsampling: the model's own bilinear resizes (FPN, logits to full size);
* other: element-wise work, copies, window partition/roll, the relative-position-bias gather, host overhead.

A compiled model's fused Triton kernels are classified by the operators their names list (Inductor names them
``triton_<kind>_fused_<ops>``), so a LayerNorm fused with an add counts as normalisation. CPU operator families are
not the GPU's kernels (other algorithms, no fusion, Python overhead visible): a CPU table shows the method works,
not where a GPU spends its time. Prints the versions of torch and transformers with the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS, PHASES, VARIANTS, TrainingStep, sync, versions  # noqa: E402

from cxrseg.model import ATTENTION_IMPLEMENTATIONS, DEFAULT_ATTENTION  # noqa: E402

FAMILIES = (
    "attention (matmuls + softmax)",
    "linear layers",
    "convolutions",
    "normalisation",
    "upsampling",
    "loss (incl. full-resolution upsampling)",
    "optimizer",
    "other (element-wise, copies, indexing)",
)

NAME_FAMILIES = (  # first match wins; names are lower-cased operator or Triton kernel names
    ("attention (matmuls + softmax)", re.compile(r"scaled_dot_product|attention|fmha|flash|bmm|softmax")),
    ("upsampling", re.compile(r"upsample|interpolat")),  # before "linear": upsample_bilinear2d
    ("linear layers", re.compile(r"addmm|(^|[^a-z])mm([^a-z]|$)|linear|gemm|matmul")),
    ("convolutions", re.compile(r"conv|cudnn")),
    ("normalisation", re.compile(r"norm")),
)

BACKWARD_NODE = "autograd::engine::evaluate_function: "


def name_family(name: str) -> str:
    lowered = name.lower()
    for family, pattern in NAME_FAMILIES:
        if pattern.search(lowered):
            return family
    return FAMILIES[-1]


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _context(event) -> tuple[str, object]:
    """(phase, the enclosing backward node or None) of a CPU operator event."""
    node, phase = None, None
    for parent in _ancestors(event):
        if node is None and parent.name.startswith(BACKWARD_NODE):
            node = parent
        if phase is None and parent.name in PHASES:
            phase = parent.name
    if node is not None and phase != "optimizer":
        return "backward", node
    return phase or "other", None


def family_times(events, device: torch.device, steps: int) -> tuple[dict, list[dict]]:
    """({family: {"forward": ms, "backward": ms, "optimizer": ms}} per step, top operators) from profiler events.

    Counts each CPU operator's self time (device kernels it launched on CUDA; its own CPU time on the CPU).
    """
    cpu_ops = [e for e in events if e.device_type == DeviceType.CPU]
    in_phase = {e: _context(e) for e in cpu_ops}
    loss_ops = {(e.sequence_nr, e.thread) for e in cpu_ops if e.sequence_nr >= 0 and in_phase[e][0] == "loss"}
    table: dict[str, dict[str, float]] = {f: defaultdict(float) for f in FAMILIES}
    by_name: dict[tuple[str, str], float] = defaultdict(float)
    for event in cpu_ops:
        if event.name in PHASES and device.type == "cuda":
            continue  # the scopes themselves launch nothing
        micros = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if micros <= 0:
            continue
        phase, node = in_phase[event]
        if phase == "optimizer":
            family = "optimizer"
        elif phase == "loss" or (node is not None and (node.sequence_nr, node.fwd_thread) in loss_ops):
            family = "loss (incl. full-resolution upsampling)"
        else:
            family = name_family(event.name)
        column = {"optimizer": "optimizer", "backward": "backward"}.get(phase, "forward")
        table[family][column] += micros / 1000 / steps
        by_name[(event.name, family)] += micros / 1000 / steps
    top = sorted(by_name.items(), key=lambda item: -item[1])[:20]
    return {f: dict(v) for f, v in table.items()}, [{"op": n, "family": f, "ms": ms} for (n, f), ms in top]


def markdown(table: dict, step_ms: float, device: torch.device) -> str:
    unit = "GPU kernel" if device.type == "cuda" else "CPU op"
    total = sum(sum(v.values()) for v in table.values())
    lines = [
        f"| family | forward ms | backward ms | optimizer ms | total ms | share of {unit} time |",
        "|---|---|---|---|---|---|",
    ]
    for family in sorted(FAMILIES, key=lambda f: -sum(table[f].values())):
        row = table[family]
        cells = [row.get(column, 0.0) for column in ("forward", "backward", "optimizer")]
        lines.append(
            f"| {family} | "
            + " | ".join(f"{c:.1f}" if c else "—" for c in cells)
            + f" | {sum(cells):.1f} | {100 * sum(cells) / total:.1f}% |"
        )
    lines.append(f"| **all ({unit} time per step)** | | | | **{total:.1f}** | 100% |")
    busy = f"; {unit} time is {100 * total / step_ms:.0f}% of it" if device.type == "cuda" else ""
    lines.append(f"\nWall time per step without the profiler: {step_ms:.1f} ms{busy}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="swin-base")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="+compile")
    parser.add_argument("--attention", choices=ATTENTION_IMPLEMENTATIONS, help="override the variant's attention")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (CPUs without bf16 units)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first (compiled: 2 more)")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto) here")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = dict(VARIANTS[args.variant])
    if args.attention:
        spec["attention"] = args.attention
    if args.fp32:
        spec["bf16"] = False
    step = TrainingStep(args.model, args.image_size, args.batch_size, spec, device)
    for _ in range(args.warmup + (2 if spec["compile"] else 0)):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    step_ms = (time.perf_counter() - start) * 1000 / args.steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync(device)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    table, top = family_times(prof.events(), device, args.steps)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stack = versions()
    precision = "bf16 autocast" if spec["bf16"] else "fp32"
    print(
        f"{name}, torch {stack['torch']}, transformers {stack['transformers']}: {args.model} at "
        f"{args.image_size}², batch {step.batch_size}, variant {args.variant} ({precision}, "
        f"{spec.get('attention', 'sdpa')} attention), {args.steps} profiled steps\n"
    )
    print(markdown(table, step_ms, device))
    print("\nTop operators by self time (ms per step):")
    for row in top:
        print(f"  {row['ms']:9.2f}  {row['family']:<42} {row['op']}")
    if args.json:
        report = {
            "device": name,
            **stack,
            "model": args.model,
            "image_size": args.image_size,
            "batch_size": step.batch_size,
            "variant": args.variant,
            "precision": precision,
            "attention": spec.get("attention", DEFAULT_ATTENTION),
            "step_ms": step_ms,
            "families_ms": table,
            "top_ops": top,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
