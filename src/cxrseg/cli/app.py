"""cxrseg app: a web page (Gradio) where a radiograph is uploaded and the model's findings are shown."""

from __future__ import annotations

import argparse

from cxrseg.app.findings import MAX_MEGAPIXELS
from cxrseg.cli.model_options import add_model_arguments
from cxrseg.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="Web app: upload a radiograph, see the overlay, probabilities and findings, download the mask.",
        description=__doc__.splitlines()[0] + " Needs Gradio: pip install 'cxrseg[app]'. Stop it with Ctrl+C.",
    )
    add_model_arguments(parser, postprocess=False, batching=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help=f"larger images are refused with a message (default {MAX_MEGAPIXELS:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be a positive number, got {args.max_megapixels:g}.")
    from cxrseg.app.web import launch, load_app  # Gradio is checked before the model is loaded

    options = {"device": args.device, "tta": args.tta, "precision": args.precision, "compile": args.compile}
    launch(load_app(args.model, max_megapixels=args.max_megapixels, **options), args.host, args.port)
    return 0
