"""The options that evaluate, predict and visualize share: which model to load and how to run it."""

from __future__ import annotations

import argparse
from typing import Any

from cxrseg.inference import PRECISIONS, TTA_MODES, Segmenter, load_segmenter


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
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes reading images (default 2)")
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
    """The keyword arguments of how to run the model: ``tta``, ``batch_size``, ``num_workers``."""
    return {"tta": args.tta, "batch_size": args.batch_size, "num_workers": args.num_workers}
