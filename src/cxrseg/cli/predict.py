"""cxrseg predict: masks, overlays and a Kaggle submission for PNG, JPEG or DICOM files of any size."""

from __future__ import annotations

import argparse

from cxrseg.cli.model_options import add_model_arguments, load_model, run_options
from cxrseg.errors import EXIT_INPUTS_SKIPPED, EXIT_OK


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
        "--dicom-seg",
        choices=("binary", "fractional"),
        help="also write OUT/dicom_seg/<id>.dcm for each DICOM input: a DICOM Segmentation referencing it, for PACS "
        "viewers (binary: the masks; fractional: the probabilities), one segment per class",
    )
    parser.add_argument(
        "--no-overlays",
        dest="overlays",
        action="store_false",
        help="write no OUT/overlays/ (faster: drawing and encoding them is a third of the time on a 2-core CPU)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.inference.predict import predict

    summary = predict(
        load_model(args),
        args.input,
        args.out,
        submission=args.submission,
        save_probabilities=args.save_probabilities,
        dicom_seg=args.dicom_seg,
        overlays=args.overlays,
        **run_options(args),
    )
    print("\n".join(summary.lines()))
    return EXIT_INPUTS_SKIPPED if summary.problems else EXIT_OK
