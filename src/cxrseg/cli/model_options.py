"""The options that evaluate, predict and visualize share: which model to load and how to run it."""

from __future__ import annotations

import argparse
from typing import Any

from cxrseg.cli import int_at_least
from cxrseg.inference.ensemble import AVERAGES, load_models
from cxrseg.inference.predictor import Predictor
from cxrseg.inference.segmenter import PRECISIONS, TTA_MODES, pick_device


def add_model_arguments(parser: argparse.ArgumentParser, postprocess: bool = True, batching: bool = True) -> None:
    """--model, --tta, --device, --precision, --compile, and --batch-size, --num-workers (with ``batching``),
    --no-postprocess and --postprocess FILE (with ``postprocess``)."""
    parser.add_argument(
        "--model",
        required=True,
        nargs="+",
        action="extend",
        help="trained model folder (run_train.py output), Hub id, or cross-validation folder (its fold models); "
        "several: their ensemble (probabilities averaged)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: hflip averages the probabilities of the image and its mirror",
    )
    if batching:
        parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass (default 8)")
        parser.add_argument(
            "--num-workers",
            type=int_at_least(0),
            default=None,
            help="DataLoader processes reading images (default: 2 on a GPU, 0 on the CPU, where the model uses every "
            "core)",
        )
    parser.add_argument(
        "--ensemble-weights",
        type=float,
        nargs="+",
        metavar="W",
        help="ensemble: one weight per member model (a CV folder counts its folds), >= 0; default: a CV folder's "
        "ensemble.json, else equal",
    )
    parser.add_argument(
        "--ensemble-average",
        choices=AVERAGES,
        default=None,
        help="ensemble: average the members' probabilities (default) or their logits",
    )
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bfloat16 autocast (faster on GPUs; probabilities may differ by ~1e-2)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: a faster forward once compiled (about a minute on a CPU the first time, "
        "seconds when torch's compile cache has it); pays off on large runs",
    )
    if postprocess:
        parser.add_argument(
            "--no-postprocess", action="store_true", help="ignore the model's postprocess.json: masks are prob >= 0.5"
        )
        parser.add_argument(
            "--postprocess",
            metavar="FILE",
            help="a postprocess.json to use instead of the model's own (e.g. from evaluating a Hub model, or a CV "
            "folder's out-of-fold rule for one of its folds)",
        )
        parser.add_argument(
            "--allow-rule-mismatch",
            action="store_true",
            help="apply a mask rule tuned on predictions made otherwise (other TTA, one model vs an ensemble) with a "
            "warning instead of refusing it",
        )


def load_model(args: argparse.Namespace) -> Predictor:
    """The model that :func:`add_model_arguments`' options name (:func:`cxrseg.inference.ensemble.load_models`),
    with its post-processing (``--postprocess``, else its own) unless turned off. The rule must fit the predictions
    (``--tta``, the models; :func:`~cxrseg.postprocessing.lookup.check_rule`) unless ``--allow-rule-mismatch``, or
    ``--search-postprocess`` which tunes a new one."""
    lenient = args.allow_rule_mismatch or getattr(args, "search_postprocess", False)
    return load_models(
        args.model,
        device=args.device,
        use_postprocess=not args.no_postprocess,
        postprocess_path=args.postprocess,
        precision=args.precision,
        compile=args.compile,
        tta=args.tta,
        rule_mismatch="warn" if lenient else "error",
        weights=args.ensemble_weights,
        average=args.ensemble_average,
    )


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of how to run the model: ``tta``, ``batch_size``, ``num_workers``.

    Without ``--num-workers``: 0 on the CPU, where reader processes take cores from the model (BENCHMARKS.md,
    inference on the CPU), else 2."""
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = 0 if pick_device(args.device).type == "cpu" else 2
    return {"tta": args.tta, "batch_size": args.batch_size, "num_workers": num_workers}
