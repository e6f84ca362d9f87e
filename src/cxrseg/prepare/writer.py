"""Writing the PNG layout: the shared run of ``cxrseg prepare siim|chestxdet|folder``.

Every prepare source turns its input into work items and calls :func:`write_layout` with the run's
:class:`PrepareOptions` and its :class:`Source` (label set, ``metadata.csv`` columns, per-item converter), which:

* refuses, before any work, an ``OUT`` that is a file, that is, holds or lies inside one of the run's inputs, that
  holds files cxrseg did not write, or that holds a dataset cxrseg wrote unless ``overwrite``
  (:func:`cxrseg.files.check_output_folder`); with ``push_to_hub`` it checks the Hub access first;
* converts each item in a worker (:func:`cxrseg.parallel.parallel_map`, one process per ``num_proc``) into a
  temporary folder next to ``OUT`` that replaces ``OUT`` only when everything succeeded
  (:func:`cxrseg.files.atomic_folder`), so an interrupted run never leaves a half dataset;
* writes ``problems.csv`` (every left-out image or dropped region, with the reason), ``metadata.csv`` (one row per
  written image) and ``labels.json``; a run that leaves no image at all is an error and writes nothing;
* optionally adds ``hf_dataset/`` and pushes the dataset privately (:mod:`cxrseg.prepare.export`).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrseg.errors import HubAccessError, OutputError, PrepareError
from cxrseg.files import DATASET, atomic_folder, check_output_folder
from cxrseg.labels import LabelSet
from cxrseg.parallel import parallel_map
from cxrseg.prepare.export import push_dataset, save_dataset
from cxrseg.prepare.problems import PROBLEM_COLUMNS, ItemResult, Problem, Summary, problems_failure


@dataclass(frozen=True)
class PrepareOptions:
    """The settings every prepare source shares (the command line's common flags).

    out: the layout folder (made absolute); new, empty, or (with ``overwrite``) a dataset cxrseg wrote.
    image_size: output side in pixels, square; None keeps the source size (pixels and masks exactly). num_proc:
    worker processes. strict: any problem is an error and nothing is written. save_dataset: also write
    ``OUT/hf_dataset`` (``datasets.save_to_disk``). push_to_hub: also push the dataset to this Hub repository,
    always private.
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
    inputs: Sequence[str | Path | None],
    problems: Sequence[Problem] = (),
) -> Summary:
    """Convert ``items`` into the layout at ``options.out`` (atomically; see the module docstring).

    splits: the ``images/<split>`` (and ``masks/<split>``) folders to create, even if empty. inputs: the files and
    folders the run reads (None ignored), which ``OUT`` must stay apart from. problems: found before converting
    (e.g. unlabelled images); with ``options.strict`` any problem raises :class:`PrepareError` and nothing is
    written. Returns the :class:`~cxrseg.prepare.problems.Summary`.
    """
    problems = list(problems)
    if options.strict and problems:
        raise problems_failure(problems)
    _check_out(options, inputs)
    rows: list[dict[str, Any]] = []
    with atomic_folder(options.out, DATASET) as root:
        for split in splits:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        convert = functools.partial(source.convert, root=root)
        for result in parallel_map(convert, items, num_proc=options.num_proc, desc=f"prepare {source.name}"):
            problems.extend(result.problems)
            if result.row is not None:
                rows.append(result.row)
        if options.strict and problems:
            raise problems_failure(problems)
        if not rows:
            raise problems_failure(problems, why="No image could be written")
        rows.sort(key=lambda row: (row["split"], row["image_id"]))
        problems.sort(key=lambda problem: (problem.split, problem.image_id, problem.reason))
        _write_csv(root / "metadata.csv", rows, source.metadata_columns)
        _write_csv(root / "problems.csv", (vars(problem) for problem in problems), PROBLEM_COLUMNS)
        source.labels.save(root)
        # what the workers found, so that the datasets export reads no mask again ("": unlabelled)
        positives = {
            (row["split"], row["image_id"]): bool(row["is_positive"]) for row in rows if row["is_positive"] != ""
        }
        if options.save_dataset:
            save_dataset(root, positives)
    summary = Summary.of(options.out, rows, problems)
    if options.push_to_hub:
        try:
            push_dataset(options.out, options.push_to_hub, positives)
        except Exception as error:  # the network or the Hub failed after the check: the layout is complete
            raise HubAccessError(
                f"Pushing {options.out} to {options.push_to_hub} failed ({type(error).__name__}: {error}). The layout "
                "is complete; rerun the same command with --overwrite to push it again."
            ) from error
    return summary


def _check_out(options: PrepareOptions, inputs: Sequence[str | Path | None]) -> None:
    """Refuse an ``OUT`` that may not receive the layout (see the module docstring), and, with ``push_to_hub``,
    check the Hub access: before any work."""
    if check_output_folder(options.out, DATASET, inputs) and not options.overwrite:
        raise OutputError(f"{options.out} holds a dataset that cxrseg wrote earlier; pass --overwrite to replace it.")
    if options.push_to_hub:
        # deferred for start-up time: torch and datasets load only when this runs
        from cxrseg.hub.access import check_hub_access  # imports torch (seconds): only for a push

        check_hub_access(options.push_to_hub)


def _write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with header ``columns``; a key outside ``columns`` is a bug (ValueError). Written inside the
    layout's temporary folder, so it needs no temporary file of its own."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
