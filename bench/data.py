#!/usr/bin/env python
"""Throughput of the training data path on one CPU core: decode + augmentation + collate, at 512².

    python bench/data.py --num-images 256 --image-size 512

Our path (``datasets`` rows with ``set_transform`` → albumentations → model inputs → ``default_data_collator``)
against a plain loop (PIL decode + the same albumentations pipeline + normalise + stack) in the same run, for
the "standard" and "aggressive" pipelines. Inputs are synthetic radiographs stored as PNG at the stored size
(``--stored-size``, 512 as ``cxrseg prepare --image-size 512`` writes). Torch and OpenCV are limited to one
thread, so images/s is per core; divide a GPU's images/s by it for the dataloader workers one GPU needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from cxrseg.config import DataArguments  # noqa: E402
from cxrseg.data.dataset import load_training_data  # noqa: E402
from cxrseg.data.transforms import ToModelInputs, build_transforms  # noqa: E402
from cxrseg.labels import PNEUMOTHORAX, binarize_mask  # noqa: E402
from cxrseg.model import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from cxrseg.synthetic import make_demo_data  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)


def ours(root: Path, augmentation: str, image_size: int, batch_size: int, out: Path) -> float:
    data_args = DataArguments(data_dir=str(root), image_size=image_size, augmentation=augmentation, val_fraction=0.05)
    split_path = out / f"splits-{augmentation}.json"
    data = load_training_data(data_args, PNEUMOTHORAX, split_path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch_size, collate_fn=default_data_collator)
    start = time.perf_counter()
    count = sum(len(batch["pixel_values"]) for batch in loader)
    return count / (time.perf_counter() - start)


def plain(root: Path, augmentation: str, image_size: int, batch_size: int) -> float:
    pipeline = build_transforms(augmentation, image_size, seed=0)
    to_inputs = ToModelInputs(IMAGENET_MEAN, IMAGENET_STD)
    images = sorted((root / "images/train").glob("*.png"))
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        pixels, labels = [], []
        for path in images[i : i + batch_size]:
            image = np.asarray(Image.open(path).convert("L"))
            mask = binarize_mask(np.asarray(Image.open(root / "masks/train" / path.name)))
            sample = pipeline(image=image, mask=mask)
            pixels.append(to_inputs.image(sample["image"]))
            labels.append(to_inputs.labels(sample["mask"]))
        torch.stack(pixels), torch.stack(labels)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--stored-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_data(Path(tmp) / "data", num_images=args.num_images, size=args.stored_size)
        ours(root, "none", args.image_size, args.batch_size, Path(tmp))  # index once, warm the page cache
        print(f"{args.num_images} PNGs at {args.stored_size}² → {args.image_size}², batch {args.batch_size}, 1 core")
        for augmentation in ("standard", "aggressive"):
            baseline = plain(root, augmentation, args.image_size, args.batch_size)
            rate = ours(root, augmentation, args.image_size, args.batch_size, Path(tmp))
            print(
                f"{augmentation:>10}: cxrseg {rate:7.1f} img/s per core   plain PIL+albumentations loop "
                f"{baseline:7.1f} img/s   ratio {rate / baseline:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
