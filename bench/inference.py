#!/usr/bin/env python
"""Inference throughput: ``cxrseg predict`` and ``cxrseg evaluate`` against a plain transformers pipeline loop.

    python bench/inference.py --device cpu --model tiny --num-images 32 --repeats 3
    python bench/inference.py --device cuda --model swin-base --num-images 512 --batch-size 32 --num-workers 8 \\
        --variants fp32,bf16,bf16+compile

The same N synthetic radiographs, stored as PNG at the model's working size (``--image-size``, as
``cxrseg prepare --image-size`` writes them), go through, in each of ``--repeats`` interleaved rounds:

* **pipeline**: the plain loop a user writes, ``pipe = pipeline("image-segmentation", model=folder)``, then
  ``pipe(path)`` per image and the foreground label's mask saved as PNG;
* **pipeline + Dice**: the same loop, also reading each ground-truth mask and computing the image's Dice;
* **predict (variant)**: :func:`cxrseg.inference.predict.predict` (batches, DataLoader workers reading, outputs
  written by threads; it writes overlays too), for each ``--variants`` entry (:data:`VARIANTS`);
* **predict (variant), masks only**: the same with ``overlays=False`` (``--no-overlays``): the pipeline loop's
  outputs, so the like-for-like comparison;
* **evaluate (variant)**: :func:`cxrseg.evaluation.evaluate.evaluate` over the same images as a PNG layout (metrics,
  per-image CSV, PR curve).

Model loading is outside the timings; every path is warmed up first on one batch. That first batch is timed too
(``start_seconds``): for a ``+compile`` variant it is the compilation, with torch's compile cache empty (the bench
points ``TORCHINDUCTOR_CACHE_DIR`` at a new folder), and ``warm_start_seconds`` is the first batch of a new process
that finds the cache filled: what a second ``cxrseg predict --compile`` on the machine waits. Rates and ratios are
given for the median round and for the best round (on a shared machine other work only ever slows a round down, so
the best round is the least disturbed one).

Identical masks, defined: the pipeline's mask for the foreground label (``argmax`` of the logits upsampled to the
input size: no resize here, the input is at the working size) against cxrseg's ``masks/<id>.png`` (``softmax >= 0.5``
without post-processing), pixel for pixel. The two rules agree except where the logits tie (``|l1 - l0|`` below
~1e-7), and a batch of several images may round float32 differently (~1e-6), so a differing pixel is counted as
*explained* when the pipeline model's own margin ``|l1 - l0|`` there is below 1e-4; the benchmark prints both
counts, and ``evaluate``'s per-image predicted areas against the pipeline masks' areas. The model has random weights
(throughput does not depend on them) with its classifier bias shifted so that about half the pixels of another
synthetic radiograph are foreground: many pixels near the decision boundary make the comparison strict.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from train_step import MODELS, versions  # noqa: E402
from transformers import pipeline  # noqa: E402

from cxrseg.evaluation.evaluate import evaluate  # noqa: E402
from cxrseg.evaluation.metrics import dice_score  # noqa: E402
from cxrseg.imageio.images import read_image  # noqa: E402
from cxrseg.inference.predict import predict  # noqa: E402
from cxrseg.inference.segmenter import Segmenter, load_segmenter, main_logits  # noqa: E402
from cxrseg.labels import PNEUMOTHORAX  # noqa: E402
from cxrseg.model import build_model, set_attention  # noqa: E402
from cxrseg.synthetic import make_demo_data, synthetic_radiograph  # noqa: E402

VARIANTS = ("fp32", "fp32+eager", "bf16", "bf16+compile", "fp32+compile")
"""cxrseg's settings timed: precision, then ``+compile`` (torch.compile), ``+eager`` (Swin attention as explicit
matmuls; the default is SDPA)."""

MARGIN = 1e-4
"""A pixel where cxrseg and the pipeline differ is explained when the logit margin there is below this."""


def save_model(folder: Path, model_name: str, image_size: int, calibration: np.ndarray) -> Path:
    """A randomly initialised model saved as training saves it, its classifier rescaled so that, on
    ``calibration`` (uint8 gray [S, S]), the logit margin ``l1 - l0`` has a trained model's spread (standard
    deviation 2; a fresh head gives ~1e-3, where float32 ties would be common) and its median pixel is on the
    decision boundary."""
    torch.manual_seed(0)
    model, processor = build_model(None, MODELS[model_name], PNEUMOTHORAX, image_size)
    model.eval()
    pixels = load_pixels(processor, calibration)
    classifier = model.decode_head.classifier
    with torch.no_grad():
        logits = main_logits(model, pixels)[0]
        margin = logits[1] - logits[0]
        scale = 2.0 / margin.std()
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale)
        classifier.bias[1] -= scale * margin.median()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def load_pixels(processor, image: np.ndarray) -> torch.Tensor:
    return processor(images=[Image.fromarray(image).convert("RGB")], return_tensors="pt")["pixel_values"]


def foreground_mask(result: list[dict], size: tuple[int, int]) -> np.ndarray:
    """The pipeline's mask (uint8 0/255 [H, W]) of the foreground label; all 0 when it did not find the label."""
    for segment in result:
        if segment["label"] == PNEUMOTHORAX.foreground[0]:
            return np.asarray(segment["mask"])
    return np.zeros(size, np.uint8)


def run_pipeline(pipe, files: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        mask = foreground_mask(pipe(str(path)), Image.open(path).size[::-1])
        Image.fromarray(mask).save(out / f"{path.stem}.png")


def run_pipeline_dice(pipe, files: list[Path], masks_dir: Path) -> float:
    """The loop plus each image's Dice against its ground truth; returns the mean Dice."""
    scores = []
    for path in files:
        truth = (read_image(masks_dir / path.name) > 0).astype(np.uint8)
        scores.append(dice_score(foreground_mask(pipe(str(path)), truth.shape), truth))
    return sum(scores) / len(scores)


def compare_masks(files: list[Path], pipeline_dir: Path, predict_dir: Path, model_dir: Path) -> dict:
    """Pixel-by-pixel comparison of the two paths' masks (module docstring)."""
    segmenter = load_segmenter(model_dir, device="cpu", use_postprocess=False)
    differing = unexplained = total = foreground = 0
    for path in files:
        ours = read_image(predict_dir / "masks" / path.name)
        theirs = np.asarray(Image.open(pipeline_dir / path.name))
        total += ours.size
        foreground += int((theirs > 0).sum())
        diff = ours != theirs
        if diff.any():
            differing += int(diff.sum())
            with torch.no_grad():
                logits = main_logits(segmenter.model, segmenter.preprocessor(read_image(path)).unsqueeze(0))[0]
            unexplained += int((diff & ((logits[1] - logits[0]).abs() >= MARGIN).numpy()).sum())
    return {
        "pixels": total,
        "foreground_fraction": foreground / total,
        "differing_pixels": differing,
        "unexplained_pixels": unexplained,
        "identical": differing == 0,
    }


def evaluation_areas_match(files: list[Path], pipeline_dir: Path, evaluation_dir: Path) -> bool:
    """Whether evaluate's per-image predicted areas equal the pipeline masks' areas (working size = input size)."""
    with (evaluation_dir / "per_image.csv").open(newline="") as handle:
        areas = {row["image_id"]: int(row["predicted_area"]) for row in csv.DictReader(handle)}
    return all(areas[p.stem] == int((np.asarray(Image.open(pipeline_dir / p.name)) > 0).sum()) for p in files)


def load_variant(model_dir: Path, device: str, variant: str) -> Segmenter:
    """The segmenter of a ``--variants`` entry: a precision, then optionally ``+compile`` and/or ``+eager`` (Swin's
    explicit attention matmuls instead of cxrseg's default SDPA)."""
    precision, *options = variant.split("+")
    segmenter = load_segmenter(
        model_dir, device=device, use_postprocess=False, precision=precision, compile="compile" in options
    )
    if "eager" in options:
        set_attention(segmenter.model, "eager")
    return segmenter


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--image-size", type=int, default=512, help="stored images and working size (pixels)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median and best reported)")
    parser.add_argument("--variants", default="fp32", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--no-evaluate", action="store_true", help="time predict only")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--first-batch", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_batch:  # the warm start, in a process of its own (see measure)
        segmenter = load_variant(Path(args.first_batch[0]), args.device, args.first_batch[1])
        pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        print(json.dumps(timed(segmenter.probabilities, pixels)))
        return
    device = torch.device(args.device)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")

    with tempfile.TemporaryDirectory(prefix="cxrseg-inference-") as tmp:
        report = measure(args, device, variants, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def measure(args: argparse.Namespace, device: torch.device, variants: list[str], work: Path) -> dict:
    """Write the data and the model under ``work``, time every path, compare the masks, print; returns the report."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "compile-cache")  # empty: the first compile is a cold one
    data = make_demo_data(work / "data", num_images=args.num_images, size=args.image_size, seed=7)
    files = sorted((data / "images" / "train").glob("*.png"))
    calibration = synthetic_radiograph(10**6, args.image_size)[0]  # not among the timed images: no built-in tie
    model_dir = save_model(work / "model", args.model, args.image_size, calibration)
    pipe = pipeline("image-segmentation", model=str(model_dir), device=device)
    segmenters = {v: load_variant(model_dir, args.device, v) for v in variants}
    options = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    paths = {"pipeline": lambda r: run_pipeline(pipe, files, work / f"pipeline{r}")}
    for v, segmenter in segmenters.items():
        paths[f"predict {v}"] = lambda r, s=segmenter, v=v: predict(
            s, data / "images" / "train", work / f"{v}{r}", **options
        )
        # what the pipeline loop writes, masks only: the like-for-like comparison
        paths[f"predict {v}, masks only"] = lambda r, s=segmenter, v=v: predict(
            s, data / "images" / "train", work / f"masks-only-{v}{r}", overlays=False, **options
        )
    if not args.no_evaluate:
        paths["pipeline + Dice"] = lambda r: run_pipeline_dice(pipe, files, data / "masks" / "train")
        for v, segmenter in segmenters.items():
            paths[f"evaluate {v}"] = lambda r, s=segmenter, v=v: evaluate(
                s, data, "train", work / f"eval-{v}{r}", **options
            )

    warm = files[: args.batch_size]
    start = {"pipeline": timed(run_pipeline, pipe, warm, work / "warm-pipeline")}
    warm_start = {}
    for v, segmenter in segmenters.items():
        warm_dir = work / f"warm-{v}"
        warm_dir.mkdir()
        for path in warm:
            (warm_dir / path.name).symlink_to(path)
        start[v] = timed(predict, segmenter, warm_dir, work / f"warm-out-{v}", **options)
        if "compile" in v:
            command = [sys.executable, __file__, "--first-batch", str(model_dir), v, "--device", args.device]
            command += ["--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            warm_start[v] = json.loads(done.stdout.strip().splitlines()[-1])

    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.repeats):
        for name, run in paths.items():
            seconds[name].append(timed(run, round_))
    rates = {name: args.num_images / statistics.median(s) for name, s in seconds.items()}
    best_rates = {name: args.num_images / min(s) for name, s in seconds.items()}

    last = args.repeats - 1
    masks = {v: compare_masks(files, work / f"pipeline{last}", work / f"{v}{last}", model_dir) for v in variants}
    stack = versions()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}, torch {stack['torch']}, transformers {stack['transformers']}: model {args.model}, "
        f"{args.num_images} images of {args.image_size}², batch {args.batch_size}, {args.num_workers} workers, "
        f"{args.repeats} rounds\n"
    )
    print("| path | images/s (median) | vs pipeline | images/s (best) | vs pipeline | rounds (s) |")
    print("|---|---|---|---|---|---|")
    for path_name in rates:
        baseline = "pipeline + Dice" if path_name.startswith("evaluate") else "pipeline"
        rounds = ", ".join(f"{s:.2f}" for s in seconds[path_name])
        median, best = rates[path_name], best_rates[path_name]
        print(
            f"| {path_name} | {median:.2f} | {median / rates[baseline]:.2f}x | {best:.2f} | "
            f"{best / best_rates[baseline]:.2f}x | {rounds} |"
        )
    print()
    firsts = ", ".join(f"{v} {seconds_:.1f}" for v, seconds_ in start.items())
    print(f"first batch, seconds (a +compile variant compiles there, torch's compile cache empty): {firsts}")
    for v, seconds_ in warm_start.items():
        print(f"{v} in a new process, the compile cache filled: first batch {seconds_:.1f} s")
    for v, result in masks.items():
        print(
            f"masks, predict {v} vs pipeline: {result['differing_pixels']} of {result['pixels']} pixels differ "
            f"({result['unexplained_pixels']} where |l1 - l0| >= {MARGIN}); foreground "
            f"{100 * result['foreground_fraction']:.1f}% → {'identical' if result['identical'] else 'NOT identical'}"
        )
        if not args.no_evaluate:
            match = evaluation_areas_match(files, work / f"pipeline{last}", work / f"eval-{v}{last}")
            result["evaluate_areas_match"] = match
            print(f"evaluate {v}: per-image predicted areas {'equal' if match else 'DIFFER from'} the pipeline's")
    return {
        "device": name,
        **stack,
        "model": args.model,
        "image_size": args.image_size,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "seconds": seconds,
        "images_per_s": rates,
        "images_per_s_best": best_rates,
        "masks": masks,
        "start_seconds": start,
        "warm_start_seconds": warm_start,
    }


if __name__ == "__main__":
    main()
