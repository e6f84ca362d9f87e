"""``cxrseg average``: the mean of a run's last K checkpoints (or each fold's), BatchNorm recomputed on its training
images, saved as a model folder (:mod:`cxrseg.training.averaging`)."""

from __future__ import annotations

import argparse

from cxrseg.cli import int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "average",
        help="Average the last K checkpoints of a run (or of each fold) into a model folder.",
        description=__doc__.splitlines()[0] + " The run needs K complete checkpoint-N folders: train with "
        "--save_total_limit null (or at least K + 1).",
    )
    parser.add_argument("--model", required=True, help="training output folder, or a cross-validation folder")
    parser.add_argument("--last", type=int_at_least(2), required=True, help="how many of the newest checkpoints")
    parser.add_argument("--out", required=True, help="the averaged model folder (a CV folder for a CV run)")
    parser.add_argument("--data-dir", help="the training images (default: data_dir of the run's recipe.yaml)")
    parser.add_argument(
        "--max-bn-images",
        type=int_at_least(1),
        help="at most this many training images to recompute BatchNorm statistics (default: the whole split)",
    )
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per BatchNorm batch (8)")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one), cpu, cuda or cuda:N")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and transformers load only when this runs
    from cxrseg.inference.segmenter import pick_device
    from cxrseg.training.averaging import average_run

    out = average_run(
        args.model,
        args.out,
        last=args.last,
        data_dir=args.data_dir,
        max_bn_images=args.max_bn_images,
        batch_size=args.batch_size,
        device=str(pick_device(args.device)),
    )
    print(f"Averaged the last {args.last} checkpoints of {args.model} → {out}")
    return 0
