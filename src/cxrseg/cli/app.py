"""cxrseg app: a web page (Gradio) where a radiograph is uploaded and the model's findings are shown."""

from __future__ import annotations

import argparse
import errno
import socket

from cxrseg.app.findings import MAX_MEGAPIXELS
from cxrseg.cli.model_options import add_model_arguments
from cxrseg.errors import EnvironmentProblem, UsageError


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
    check_port_free(args.host, args.port)  # before the model loads, not after, in Gradio's traceback
    from cxrseg.app.web import launch, load_app  # Gradio is checked before the model is loaded

    options = {"device": args.device, "tta": args.tta, "precision": args.precision, "compile": args.compile}
    launch(load_app(args.model, max_megapixels=args.max_megapixels, **options), args.host, args.port)
    return 0


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`~cxrseg.errors.EnvironmentProblem` (exit 1) saying what to do when ``host:port`` cannot be
    served on: in use by another program, or not allowed (a port below 1024 without the rights)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise EnvironmentProblem(
                    f"Port {port} on {host} is in use (another app, or a cxrseg app still running): stop it or "
                    "choose another --port."
                ) from None
            if error.errno == errno.EACCES:
                message = f"Port {port} needs administrator rights: choose a --port above 1023."
                raise EnvironmentProblem(message) from None
            raise EnvironmentProblem(f"Cannot serve on {host}:{port} ({error.strerror}): check --host.") from None
