"""The options that evaluate, predict and visualize share: which model to load and how to run it."""

from __future__ import annotations

import argparse
from typing import Any

from cxrseg.inference import PRECISIONS, TTA_MODES, Segmenter, load_segmenter, pick_device


def add_model_arguments(parser: argparse.ArgumentParser, postprocess: bool = True) -> None:
    """--model, --tta, --batch-size, --num-workers, --device, --precision, --compile (and --no-postprocess)."""
    parser.add_argument("--model", required=True, help="trained model folder (run_train.py output) or Hub id")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: hflip averages the probabilities of the image and its mirror",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader processes reading images (default: 2 on a GPU, 0 on the CPU, where the model uses every core)",
    )
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bfloat16 autocast (faster on GPUs; probabilities may differ by ~1e-2)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on large runs)")
    if postprocess:
        parser.add_argument(
            "--no-postprocess", action="store_true", help="ignore the model's postprocess.json: masks are prob >= 0.5"
        )


def load_model(args: argparse.Namespace, postprocess_path: str | None = None) -> Segmenter:
    """The model that :func:`add_model_arguments`' options name, with its post-processing unless turned off."""
    return load_segmenter(
        args.model,
        device=args.device,
        use_postprocess=not args.no_postprocess,
        postprocess_path=postprocess_path,
        precision=args.precision,
        compile=args.compile,
    )


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of how to run the model: ``tta``, ``batch_size``, ``num_workers``.

    Without ``--num-workers``: 0 on the CPU, where reader processes take cores from the model (BENCHMARKS.md,
    inference on the CPU), else 2."""
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = 0 if pick_device(args.device).type == "cpu" else 2
    return {"tta": args.tta, "batch_size": args.batch_size, "num_workers": num_workers}
