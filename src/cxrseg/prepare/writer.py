"""Writing the PNG layout: the shared run of ``cxrseg prepare siim|chestxdet|folder``.

Every prepare source turns its input into work items and calls :func:`write_layout` with the run's
:class:`PrepareOptions` and its :class:`Source` (label set, ``metadata.csv`` columns, per-item converter), which:

* refuses an ``OUT`` that is a file, or a non-empty folder unless ``overwrite``;
* converts each item in a worker (:func:`cxrseg.parallel.parallel_map`, one process per ``num_proc``) into a
  temporary folder next to ``OUT`` that replaces ``OUT`` only when everything succeeded
  (:func:`cxrseg.files.atomic_folder`), so an interrupted run never leaves a half dataset;
* writes ``problems.csv`` (every left-out image or dropped region, with the reason), ``metadata.csv`` (one row per
  written image) and ``labels.json``;
* optionally adds ``hf_dataset/`` and pushes the dataset privately (:mod:`cxrseg.prepare.export`).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrseg.errors import PrepareError
from cxrseg.files import atomic_folder
from cxrseg.labels import LabelSet
from cxrseg.parallel import parallel_map
from cxrseg.prepare.export import push_dataset, save_dataset
from cxrseg.prepare.problems import PROBLEM_COLUMNS, ItemResult, Problem, Summary, strict_failure


@dataclass(frozen=True)
class PrepareOptions:
    """The settings every prepare source shares (the command line's common flags).

    out: the layout folder (made absolute); it must be empty or absent unless ``overwrite``. image_size: output
    side in pixels, square; None keeps the source size (pixels and masks exactly). num_proc: worker processes.
    strict: any problem is an error and nothing is written. save_dataset: also write ``OUT/hf_dataset``
    (``datasets.save_to_disk``). push_to_hub: also push the dataset to this Hub repository, always private.
    """

    out: Path
    image_size: int | None = None
    num_proc: int = 1
    overwrite: bool = False
    strict: bool = False
    save_dataset: bool = False
    push_to_hub: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out).absolute())
        if self.image_size is not None and self.image_size <= 0:
            raise PrepareError(f"--image-size must be positive, got {self.image_size}.")


@dataclass(frozen=True)
class Source:
    """One kind of prepare input. name: shown on the progress bar. labels: written as ``labels.json``.
    metadata_columns: the ``metadata.csv`` header (every row's keys). convert: ``convert(item, root)`` writes one
    item's PNGs under the layout root and returns its :class:`~cxrseg.prepare.problems.ItemResult`; module-level,
    so worker processes can run it."""

    name: str
    labels: LabelSet
    metadata_columns: tuple[str, ...]
    convert: Callable[[Any, Path], ItemResult]


def write_layout(
    options: PrepareOptions,
    source: Source,
    items: Sequence[Any],
    *,
    splits: Iterable[str],
    problems: Sequence[Problem] = (),
) -> Summary:
    """Convert ``items`` into the layout at ``options.out`` (atomically; see the module docstring).

    splits: the ``images/<split>`` (and ``masks/<split>``) folders to create, even if empty. problems: found
    before converting (e.g. unlabelled images); with ``options.strict`` any problem raises :class:`PrepareError`
    and nothing is written. Returns the :class:`~cxrseg.prepare.problems.Summary`.
    """
    problems = list(problems)
    if options.strict and problems:
        raise strict_failure(problems)
    _check_out(options)
    rows: list[dict[str, Any]] = []
    with atomic_folder(options.out) as root:
        for split in splits:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        convert = functools.partial(source.convert, root=root)
        for result in parallel_map(convert, items, num_proc=options.num_proc, desc=f"prepare {source.name}"):
            problems.extend(result.problems)
            if result.row is not None:
                rows.append(result.row)
        if options.strict and problems:
            raise strict_failure(problems)
        rows.sort(key=lambda row: (row["split"], row["image_id"]))
        problems.sort(key=lambda problem: (problem.split, problem.image_id, problem.reason))
        _write_csv(root / "metadata.csv", rows, source.metadata_columns)
        _write_csv(root / "problems.csv", (vars(problem) for problem in problems), PROBLEM_COLUMNS)
        source.labels.save(root)
        if options.save_dataset:
            save_dataset(root)
    summary = Summary.of(options.out, rows, problems)
    if options.push_to_hub:
        push_dataset(options.out, options.push_to_hub)
    return summary


def _check_out(options: PrepareOptions) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder without ``overwrite`` (before any work)."""
    out = options.out
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not options.overwrite:
        raise PrepareError(f"{out} is not empty; pass --overwrite to replace it.")


def _write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with header ``columns``; a key outside ``columns`` is a bug (ValueError). Written inside the
    layout's temporary folder, so it needs no temporary file of its own."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
