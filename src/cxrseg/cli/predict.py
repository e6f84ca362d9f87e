"""cxrseg predict: masks, overlays and a Kaggle submission for PNG, JPEG or DICOM files of any size."""

from __future__ import annotations

import argparse
import logging

from cxrseg.cli.evaluate import add_model_arguments
from cxrseg.errors import EXIT_INPUTS_SKIPPED, EXIT_OK
from cxrseg.inference import load_segmenter

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="Masks, overlays and a Kaggle submission for PNG, JPEG or DICOM files.",
        description=__doc__.splitlines()[0] + " Masks are returned at each input's original size: "
        "OUT/masks/<id>.png (0/255; multi-label: 16-bit bit field + OUT/labels.json), OUT/overlays/<id>.png. "
        "Unreadable inputs are skipped and listed in OUT/problems.csv (exit status 1).",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--input",
        required=True,
        help="an image file or a folder (searched recursively) of .png, .jpg, .jpeg, .dcm files",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--submission",
        help="also write the SIIM Kaggle CSV (ImageId,EncodedPixels) here; RLE at "
        "1024x1024 (other sizes: mask resized with nearest neighbour)",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write OUT/probabilities/<id>.png: round(255 * p) at the original size",
    )
    parser.add_argument(
        "--postprocess",
        metavar="FILE",
        help="a postprocess.json to use instead of the model's own (e.g. from evaluating a Hub model)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrseg.predict import predict

    segmenter = load_segmenter(
        args.model, device=args.device, use_postprocess=not args.no_postprocess, postprocess_path=args.postprocess
    )
    summary = predict(
        segmenter,
        args.input,
        args.out,
        tta=args.tta,
        submission=args.submission,
        save_probabilities=args.save_probabilities,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    print("\n".join(summary.lines()))
    return EXIT_INPUTS_SKIPPED if summary.problems else EXIT_OK
