"""The options that evaluate, predict and visualize share: which model to load and how to run it."""

from __future__ import annotations

import argparse
from typing import Any

from cxrseg.cross_validation import is_cv_folder
from cxrseg.ensemble import Ensemble, load_ensemble
from cxrseg.inference import TTA_MODES, Segmenter, load_segmenter


def add_model_arguments(parser: argparse.ArgumentParser, postprocess: bool = True) -> None:
    """--model, --tta, --batch-size, --num-workers, --device (and --no-postprocess, --postprocess FILE)."""
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
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes reading images (default 2)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
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


def load_model(args: argparse.Namespace) -> Segmenter | Ensemble:
    """The model that :func:`add_model_arguments`' options name, with its post-processing (``--postprocess``, else
    its own) unless turned off: one model, or the :class:`~cxrseg.ensemble.Ensemble` of a CV folder or of several
    ``--model`` values."""
    options = {"device": args.device, "use_postprocess": not args.no_postprocess, "postprocess_path": args.postprocess}
    if len(args.model) == 1 and not is_cv_folder(args.model[0]):
        return load_segmenter(args.model[0], **options)
    return load_ensemble(args.model, **options)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of how to run the model: ``tta``, ``batch_size``, ``num_workers``."""
    return {"tta": args.tta, "batch_size": args.batch_size, "num_workers": args.num_workers}
