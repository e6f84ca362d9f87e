"""What a prepare run reports: one :class:`Problem` per left-out image or dropped region (``problems.csv``), the
per-item :class:`ItemResult` of a worker, the run's :class:`Summary`, and the ImageId rule
(:func:`check_image_id`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrseg.errors import PrepareError

PROBLEM_COLUMNS = ("image_id", "split", "reason", "action", "detail")
IMAGE_SKIPPED = "image skipped"
"""``Problem.action`` of a problem that left the whole image out of the layout."""


@dataclass(frozen=True)
class Problem:
    """One row of ``problems.csv``. action: what was done, e.g. :data:`IMAGE_SKIPPED` or "region dropped"."""

    image_id: str
    split: str
    reason: str
    action: str
    detail: str = ""


@dataclass
class ItemResult:
    """What a worker returns for one item: the ``metadata.csv`` row of the written image (None if skipped) and
    the problems found. The row holds at least ``image_id``, ``split`` and ``is_positive`` ("" when unlabelled)."""

    row: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Summary:
    """Counts of a prepare run. positive/negative count labelled images; unlabelled ones (test) are apart.
    converted: how many files each conversion was applied to (the rows' ``converted`` column, when a source
    writes one)."""

    out: Path
    written: int = 0
    positive: int = 0
    negative: int = 0
    unlabelled: int = 0
    per_split: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    other_problems: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, out: Path, rows: Sequence[dict[str, Any]], problems: Sequence[Problem]) -> Summary:
        """The counts of the written ``metadata.csv`` rows and of the problems."""
        summary = cls(out=out, written=len(rows))
        for row in rows:
            summary.per_split[row["split"]] += 1
            if row["is_positive"] == "":
                summary.unlabelled += 1
            elif row["is_positive"]:
                summary.positive += 1
            else:
                summary.negative += 1
            for conversion in filter(None, row.get("converted", "").split("; ")):
                summary.converted[conversion] += 1
        for problem in problems:
            counter = summary.skipped if problem.action == IMAGE_SKIPPED else summary.other_problems
            counter[problem.reason] += 1
        return summary

    def __str__(self) -> str:
        lines = [
            f"Wrote {self.written} images to {self.out} ("
            + ", ".join(f"{split}: {count}" for split, count in sorted(self.per_split.items()))
            + f"); positive {self.positive}, negative {self.negative}, without mask {self.unlabelled}.",
            f"Skipped {sum(self.skipped.values())} images"
            + ("" if not self.skipped else ": " + ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))),
        ]
        if self.converted:
            lines.append(
                "Converted (per file: metadata.csv, column converted): "
                + "; ".join(f"{what}: {n}" for what, n in sorted(self.converted.items()))
            )
        if self.other_problems:
            lines.append(
                "Other problems (image kept): " + ", ".join(f"{r}: {n}" for r, n in sorted(self.other_problems.items()))
            )
        if self.skipped or self.other_problems:
            lines.append(f"Details: {self.out / 'problems.csv'}")
        return "\n".join(lines)


def problems_failure(problems: Sequence[Problem], why: str = "--strict") -> PrepareError:
    """The error of a run that writes nothing because of ``problems`` (``why``: ``--strict``, or that no image was
    left): the problems counted by reason, the first ten listed."""
    counts = Counter(problem.reason for problem in problems)
    shown = "\n".join(f"  {p.split}/{p.image_id}: {p.reason} ({p.action}) {p.detail}" for p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return PrepareError(
        f"{why}: {len(problems)} problems ({', '.join(f'{r}: {n}' for r, n in sorted(counts.items()))}); "
        f"nothing was written.\n{shown}{more}"
    )


def check_image_id(image_id: str, where: str) -> str:
    """``image_id`` if it is a plain file name (no path separators, not ``.``/``..``, no control characters);
    otherwise :class:`PrepareError` naming ``where`` (the row or file it came from)."""
    bad = (
        not image_id
        or image_id in (".", "..")
        or any(sep in image_id for sep in ("/", "\\", os.sep))
        or any(ord(char) < 32 for char in image_id)
        or image_id != image_id.strip()
    )
    if bad:
        raise PrepareError(f"{where}: ImageId {image_id!r} is not a plain file name; refusing to write it.")
    return image_id
