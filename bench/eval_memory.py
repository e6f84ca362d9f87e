"""Peak memory of `cxrseg evaluate --search-postprocess` does not grow with the number of images.

    python bench/eval_memory.py                      # 100 vs 2,000 synthetic images at 128 px, tiny model
    python bench/eval_memory.py --small 100 --large 2000 --image-size 128 --batch-size 16

Writes a synthetic dataset (``make_demo_data``) and a tiny randomly initialised UperNet-Swin to a temporary folder,
then runs what ``cxrseg evaluate --search-postprocess --num-workers 0`` runs (metrics, per_image.csv, PR curve and
the triplet grid search, all in one streaming pass; no reader processes, so all work happens in the measured
process) once per size, each in a fresh subprocess that reports its own peak resident set size (``ru_maxrss``).

Control: the large run once more with every batch of probabilities kept in a list — the anti-pattern of storing
all predictions — to show that the measurement would catch memory that grows with the number of images.

Prints the peaks and the ratio large / small. Goal: within +10% (ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS  # noqa: E402  (one home for the bench models)

TINY_MODEL_CONFIG = MODELS["tiny"]


def child(args: argparse.Namespace) -> None:
    """Run one evaluation in this process and print its peak RSS (MiB) as JSON on the last line."""
    if args.keep_probabilities:
        from cxrseg.inference.segmenter import Segmenter

        kept, probabilities = [], Segmenter.probabilities

        def keeping(self, pixel_values, tta="none"):
            probs = probabilities(self, pixel_values, tta)
            kept.append(probs.clone())
            return probs

        Segmenter.probabilities = keeping
    from cxrseg.evaluation.evaluate import evaluate
    from cxrseg.inference.segmenter import load_segmenter

    start = time.perf_counter()  # what `cxrseg evaluate --search-postprocess --num-workers 0` runs
    result = evaluate(
        load_segmenter(args.model),
        args.data,
        args.split,
        args.out,
        batch_size=args.batch_size,
        num_workers=0,
        search=True,
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"images": result.metrics["num_images"], "peak_mib": peak_mib, "seconds": seconds}))


def measure(script: Path, model: Path, data: Path, split: str, out: Path, batch_size: int, keep: bool) -> dict:
    run_model = out / "model"  # a fresh copy: the search writes postprocess.json next to the model
    shutil.copytree(model, run_model)
    command = [
        sys.executable,
        str(script),
        "--child",
        "--model",
        str(run_model),
        "--data",
        str(data),
        "--split",
        split,
        "--out",
        str(out / "evaluation"),
        "--batch-size",
        str(batch_size),
    ]
    if keep:
        command.append("--keep-probabilities")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parent(args: argparse.Namespace) -> None:
    from cxrseg.labels import PNEUMOTHORAX
    from cxrseg.model import build_model
    from cxrseg.synthetic import make_demo_data

    with tempfile.TemporaryDirectory(prefix="cxrseg-eval-memory-") as tmp:
        root = Path(tmp)
        data = make_demo_data(root / "data", num_images=args.large, size=args.image_size, seed=0)
        for kind in ("images", "masks"):  # the first `small` pairs as a second split folder
            (data / kind / "small").mkdir()
            for path in sorted((data / kind / "train").iterdir())[: args.small]:
                shutil.copy(path, data / kind / "small" / path.name)
        config = dict(
            TINY_MODEL_CONFIG, backbone_config=dict(TINY_MODEL_CONFIG["backbone_config"], image_size=args.image_size)
        )
        model, processor = build_model(None, config, PNEUMOTHORAX, args.image_size)
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")

        script = Path(__file__).resolve()
        runs = [("small", args.small, False), ("train", args.large, False), ("train", args.large, True)]
        reports = []
        for i, (split, count, keep) in enumerate(runs):
            report = measure(script, root / "model", data, split, root / f"run{i}", args.batch_size, keep)
            reports.append(report)
            label = f"{count} images" + (" (control: keeps every probability)" if keep else "")
            print(f"{label:<48} peak RSS {report['peak_mib']:8.1f} MiB   {report['seconds']:6.1f} s")
        small, large, control = (r["peak_mib"] for r in reports)
        stored = args.large * args.image_size**2 * 4 / 2**20
        print(f"ratio {args.large} / {args.small} images: {large / small:.3f} (goal <= 1.10)")
        print(f"control ratio (storing probabilities, {stored:.0f} MiB of float32): {control / small:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100, help="images in the small run (default 100)")
    parser.add_argument("--large", type=int, default=2000, help="images in the large run (default 2000)")
    parser.add_argument("--image-size", type=int, default=128, help="image and working size, pixels (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep-probabilities", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
