"""cxrseg visualize predictions|features|curves: pictures of a trained model for a reviewer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrseg.cli import int_at_least
from cxrseg.cli.model_options import add_model_arguments, load_model, run_options
from cxrseg.errors import DataError
from cxrseg.files import check_output_file
from cxrseg.inference.segmenter import load_segmenter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="Pictures of a trained model: predictions, feature maps, training curves.",
        description=__doc__,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    predictions = kinds.add_parser(
        "predictions",
        help="input | truth | probability | overlay per image, for true positives, misses, false positives and "
        "true negatives, titled with the image's Dice",
    )
    add_model_arguments(predictions)
    predictions.add_argument("--data", required=True, help="data root in the PNG layout")
    predictions.add_argument("--split", default="val", help="as for cxrseg evaluate (default val)")
    predictions.add_argument("--n", type=int_at_least(1), default=16, help="number of images (default 16)")
    predictions.add_argument("--out", help="PNG to write (default MODEL/predictions_<split>.png for a local model)")
    predictions.set_defaults(func=run_predictions)

    features = kinds.add_parser(
        "features", help="feature maps of each Swin stage and the UperNet heads (mean and most active channels)"
    )
    features.add_argument("--model", required=True, help="trained model folder or Hub id")
    features.add_argument("--image", required=True, help="a PNG, JPEG or DICOM file")
    features.add_argument("--top", type=int_at_least(1), default=6, help="channels shown per layer (default 6)")
    features.add_argument("--out", help="PNG to write (default feature_maps_<image id>.png in the current folder)")
    features.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    features.set_defaults(func=run_features)

    curves = kinds.add_parser("curves", help="loss, eval Dice, Kaggle Dice and AP per step from trainer_state.json")
    curves.add_argument("--model", required=True, help="a training output folder (holding trainer_state.json)")
    curves.add_argument("--out", help="PNG to write (default MODEL/training_curves.png)")
    curves.set_defaults(func=run_curves)


def run_predictions(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.evaluation.examples import prediction_examples
    from cxrseg.plots import is_cxrseg_figure, plot_prediction_grid

    segmenter = load_model(args)
    if args.out:
        out = Path(args.out)
    elif segmenter.is_local:
        out = segmenter.model_dir / f"predictions_{args.split}.png"
    else:
        out = Path(f"predictions_{args.split}.png")
    check_output_file(out, is_cxrseg_figure, inputs=[args.data])
    examples = prediction_examples(segmenter, args.data, args.split, args.n, **run_options(args))
    title = f"{Path(segmenter.source).name} on {args.split} at {segmenter.image_size}x{segmenter.image_size}"
    plot_prediction_grid(examples, out, segmenter.output_names, title=title)
    print(f"Wrote {out} ({len(examples)} images)")
    return 0


def run_features(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.imageio.images import read_image
    from cxrseg.inference.segmenter import feature_maps
    from cxrseg.plots import is_cxrseg_figure, plot_feature_maps

    out = Path(args.out) if args.out else Path(f"feature_maps_{Path(args.image).stem}.png")
    check_output_file(out, is_cxrseg_figure, inputs=[args.image])
    segmenter = load_segmenter(args.model, device=args.device, use_postprocess=False)
    image = read_image(args.image)
    features, probs = feature_maps(segmenter, image)
    resized = segmenter.preprocessor.resize(image)[0]
    plot_feature_maps(
        resized,
        features,
        probs.numpy(),
        out,
        top=args.top,
        title=f"{Path(segmenter.source).name}: {Path(args.image).name}",
    )
    print(f"Wrote {out} ({len(features)} layers)")
    return 0


def run_curves(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.plots import is_cxrseg_figure, plot_training_curves

    state_path = Path(args.model) / "trainer_state.json"
    if not state_path.is_file():
        raise DataError(f"{state_path} does not exist: --model must be a training output folder.")
    try:
        log_history = json.loads(state_path.read_text())["log_history"]
    except (KeyError, ValueError) as error:
        raise DataError(f"{state_path}: not a Trainer state file ({type(error).__name__}: {error}).") from error
    out = Path(args.out) if args.out else Path(args.model) / "training_curves.png"
    check_output_file(out, is_cxrseg_figure, inputs=[state_path])
    plot_training_curves(log_history, out, title=Path(args.model).resolve().name)
    print(f"Wrote {out}")
    return 0
