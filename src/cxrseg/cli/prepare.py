"""cxrseg prepare siim|chestxdet|folder: raw downloads or your own folders → the PNG layout training reads."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from cxrseg.cli import int_at_least
from cxrseg.errors import EXIT_INPUTS_SKIPPED, EXIT_OK

if TYPE_CHECKING:  # annotations only (start-up time: the prepare modules load when a command runs)
    from cxrseg.prepare.problems import Summary
    from cxrseg.prepare.writer import PrepareOptions


PUSH_HELP = (
    "also push the dataset to this Hub repository, always PRIVATE (private=True): SIIM-ACR's terms forbid public "
    "redistribution of its images and masks (check ChestX-Det's and your own data's terms too)."
)


PATIENT_IDS_HELP = (
    "a CSV with columns image_id and PatientID, copied into metadata.csv: cross-validation folds then keep each "
    "patient's images together"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help=__doc__.splitlines()[0], description=__doc__)
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    siim = sources.add_parser(
        "siim",
        help="SIIM-ACR pneumothorax DICOMs + RLE CSV",
        description="SIIM-ACR (Kaggle) DICOMs + train RLE CSV (train-rle.csv or stage_2_train.csv) → PNG layout.",
    )
    siim.add_argument("--dicom-dir", required=True, help="folder of train DICOMs (searched recursively)")
    siim.add_argument("--rle-csv", required=True, help="train-rle.csv (stage 1) or stage_2_train.csv (stage 2)")
    siim.add_argument("--test-dicom-dir", help="folder of test DICOMs (written as split 'test', without masks)")
    _add_common(siim, default_size=512)
    siim.set_defaults(func=_run_siim)

    chestxdet = sources.add_parser(
        "chestxdet",
        help="ChestX-Det images + official JSON annotations",
        description="ChestX-Det PNGs + ChestX_Det_train.json / ChestX_Det_test.json → multi-label PNG layout "
        "(16-bit bit-field masks). A file whose name contains 'test' is split test, 'train' is train; otherwise "
        "the first file is train and the second test.",
    )
    chestxdet.add_argument("--images", required=True, help="folder of the images (searched recursively)")
    chestxdet.add_argument(
        "--annotations", required=True, action="append", help="annotation JSON; repeat for train and test"
    )
    chestxdet.add_argument("--patient-ids", metavar="CSV", help=PATIENT_IDS_HELP)
    _add_common(chestxdet, default_size=512)
    chestxdet.set_defaults(func=_run_chestxdet)

    folder = sources.add_parser(
        "folder",
        help="your own images + masks",
        description="Images + masks matched by file name (masks: 0/255 or 0/1 binary, class indices, or 16-bit "
        "multi-label bit fields) → PNG layout.",
    )
    folder.add_argument("--images", required=True, help="folder of images (searched recursively)")
    folder.add_argument("--masks", required=True, help="folder of masks named like the images")
    folder.add_argument(
        "--labels", help='labels JSON, e.g. {"task": "custom", "names": ["background", "lesion"], "multilabel": false}'
    )
    folder.add_argument(
        "--mask-suffix",
        default="",
        help="what mask file names add to their image's name, e.g. _mask for CHNCXR_0001_0_mask.png (default: none)",
    )
    folder.add_argument("--split", default="train", help="split to write the pairs to (default: train)")
    folder.add_argument("--patient-ids", metavar="CSV", help=PATIENT_IDS_HELP)
    _add_common(folder, default_size=None)
    folder.set_defaults(func=_run_folder)


def _add_common(parser: argparse.ArgumentParser, default_size: int | None) -> None:
    parser.add_argument(
        "--out",
        required=True,
        help="output folder: new or empty, or a dataset cxrseg prepared (with --overwrite); apart from the inputs",
    )
    keep = "keep the source size" if default_size is None else f"default {default_size}"
    parser.add_argument(
        "--image-size",
        type=int,
        default=default_size,
        help=f"output side in pixels, square ({keep}); the source size keeps pixels and masks exactly",
    )
    parser.add_argument("--num-proc", type=int_at_least(1), default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an --out that holds a dataset cxrseg prepared earlier"
    )
    parser.add_argument("--strict", action="store_true", help="fail (writing nothing) if any problem is found")
    parser.add_argument("--save-dataset", action="store_true", help="also write OUT/hf_dataset (datasets.save_to_disk)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help=PUSH_HELP)


def _options(args: argparse.Namespace) -> PrepareOptions:
    """The common flags (:func:`_add_common`, named like the fields) as the options every prepare source takes."""
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.prepare.writer import PrepareOptions

    return PrepareOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(PrepareOptions)})


def _report(summary: Summary) -> int:
    print(summary)
    return EXIT_INPUTS_SKIPPED if summary.skipped else EXIT_OK


def _run_siim(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.prepare.siim import prepare_siim

    return _report(prepare_siim(args.dicom_dir, args.rle_csv, _options(args), test_dicom_dir=args.test_dicom_dir))


def _run_chestxdet(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.prepare.chestxdet import prepare_chestxdet

    return _report(prepare_chestxdet(args.images, args.annotations, _options(args), patient_ids=args.patient_ids))


def _run_folder(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.prepare.folder import prepare_folder

    options = _options(args)
    return _report(
        prepare_folder(
            args.images,
            args.masks,
            options,
            labels_file=args.labels,
            split=args.split,
            patient_ids=args.patient_ids,
            mask_suffix=args.mask_suffix,
        )
    )
