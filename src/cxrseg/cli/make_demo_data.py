"""``cxrseg make-demo-data``: write the synthetic demo dataset in the PNG layout."""

from __future__ import annotations

import argparse

from cxrseg.data.synthetic import make_demo_data


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-demo-data", help="Write a synthetic chest-radiograph-like pneumothorax dataset (PNG layout)."
    )
    parser.add_argument("--out", required=True, help="New folder to create (must not exist).")
    parser.add_argument("--num-images", type=int, default=400, help="Number of images (default 400).")
    parser.add_argument("--size", type=int, default=256, help="Image side, pixels (default 256).")
    parser.add_argument("--seed", type=int, default=0, help="Seed; the same seed gives the same files.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = make_demo_data(args.out, num_images=args.num_images, size=args.size, seed=args.seed)
    print(f"Wrote {args.num_images} images to {out}")
    return 0
