"""``cxrseg make-demo-data``: write a synthetic demo dataset in the PNG layout."""

from __future__ import annotations

import argparse

from cxrseg.cli import int_at_least
from cxrseg.synthetic import DEMO_DATA_MAKERS, MULTILABEL_DEMO_CLASSES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-demo-data",
        help="Write a synthetic chest-radiograph-like dataset (PNG layout): pneumothorax, multi-label ChestX-Det, "
        "or anatomy (lung fields and heart).",
    )
    parser.add_argument("--out", required=True, help="New folder to create (must not exist).")
    parser.add_argument(
        "--task",
        choices=sorted(DEMO_DATA_MAKERS),
        default="pneumothorax",
        help="pneumothorax (binary, default), chestxdet (multi-label, 16-bit masks; draws "
        f"{', '.join(MULTILABEL_DEMO_CLASSES)}, overlapping) or anatomy (your own label set as far as cxrseg "
        "knows: background, lung, heart as class indices; patients placed and sized differently).",
    )
    parser.add_argument("--num-images", type=int, default=400, help="Number of images (default 400).")
    parser.add_argument("--size", type=int_at_least(1), default=256, help="Image side, pixels (default 256).")
    parser.add_argument("--seed", type=int, default=0, help="Seed; the same seed gives the same files.")
    parser.add_argument(
        "--split",
        default="train",
        help="Split folder to write (default train); e.g. test, drawn with another --seed, for a held-out set.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = DEMO_DATA_MAKERS[args.task](
        args.out, num_images=args.num_images, size=args.size, seed=args.seed, split=args.split
    )
    print(f"Wrote {args.num_images} {args.task} images to {out}")
    return 0
