"""The one error family: every error a user can cause is a :class:`CxrsegError` that knows its exit status.

Exit statuses, the same for ``run_train.py`` and every ``cxrseg`` command:

* **0**: the work finished and every input was used.
* **1**: the work finished but some inputs were skipped; they are listed (with the reason) in ``problems.csv``.
* **1** also: the machine stopped the work (no space left, no permission, a port in use): an
  :class:`EnvironmentProblem`, whose line says what to free or change.
* **2**: a user error found before the work was done (bad arguments, recipe, data or model); nothing was produced.

A :class:`CxrsegError` is printed as one line (``error: ...``) by :func:`report` at the entry points
(``cxrseg.cli.main``, ``cxrseg.training.train.main``); any other exception is a bug and keeps its traceback. Library
errors
(yaml, safetensors, the Hub, albumentations, argparse) are converted to one of these where cxrseg calls the library.
With the environment variable ``CXRSEG_DEBUG=1`` a user error also prints its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_INPUTS_SKIPPED = 1
EXIT_USER_ERROR = 2


class CxrsegError(Exception):
    """A user error: the message names the file, row or key and says what to do."""

    exit_code = EXIT_USER_ERROR


class RecipeError(CxrsegError):
    """A recipe or command line that cannot be parsed: unknown key, bad value, missing file."""


class DataError(CxrsegError):
    """Bad input data (a training layout, a split, a saved dataset)."""


class OutputError(CxrsegError):
    """An output path cxrseg may not write: it is, holds or lies inside an input, it holds files cxrseg did not
    write, or it is a file where a folder belongs (or the reverse)."""


class OutputLockedError(OutputError):
    """The output folder is locked by another run that is still going on; the message names the process."""


class PrepareError(CxrsegError):
    """A prepare run that cannot go on (bad arguments, unusable input, or problems under ``--strict``)."""


class DicomError(CxrsegError):
    """A DICOM file that cannot be turned into an image; the message names the file and the fix."""


class RLEError(CxrsegError):
    """A malformed ``EncodedPixels`` string; the message names the row or ImageId."""


class ModelLoadError(CxrsegError):
    """A model that cannot be loaded; the message names the folder or Hub id and what is wrong."""


class CheckpointError(CxrsegError):
    """A checkpoint that cannot be resumed from (missing, incomplete or corrupt); the message names the file."""


class PredictError(CxrsegError):
    """Bad arguments or inputs found before any prediction; the message names the file."""


class UsageError(CxrsegError):
    """Command-line arguments that do not fit together or do not fit the model (beyond what argparse checks)."""


class HubAccessError(CxrsegError):
    """The Hub cannot be used for this push (offline, no or read-only token, foreign namespace)."""


class TrackingSetupError(CxrsegError):
    """A ``report_to`` integration cannot work in this environment."""


class OptionalDependencyError(CxrsegError):
    """An optional part of cxrseg whose packages are not installed; the message names the pip extra."""


class EnvironmentProblem(CxrsegError):
    """The machine stopped the work, not the input: no space left, no permission, a read-only file system, a port in
    use. Exit status 1 (the work did not finish; what was written is whole, and a rerun or resume goes on); the
    message says what to free or change."""

    exit_code = 1


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")
"""How a full disk shows in errors that are not an ``OSError`` with its errno: safetensors (Rust) and torch (C++)
put the OS's message in their own exceptions."""


TORCH_WRITE_FAILED = ("PytorchStreamWriter", "inline_container.cc")
"""torch.save's failed writes, which do not say why (``unexpected pos 1036544 vs 1036436``): a full disk when the
disk of the output is full too."""
FULL_BELOW = 16 * 2**20
"""Free bytes under which the disk of an output counts as full, for :data:`TORCH_WRITE_FAILED`."""


def _disk_is_full(paths: Sequence[str | os.PathLike | None]) -> bool:
    for path in paths:
        existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None) if path else None
        if existing is not None and shutil.disk_usage(existing).free < FULL_BELOW:
            return True
    return False


def environment_problem(
    error: BaseException, outputs: Sequence[str | os.PathLike | None] = ()
) -> EnvironmentProblem | None:
    """The :class:`EnvironmentProblem` an exception (or one in its chain) stands for, or None when it is none: a full
    disk (``ENOSPC``, ``EDQUOT``, or their text in a safetensors error; a failed ``torch.save`` when the disk of one
    of ``outputs`` has under :data:`FULL_BELOW` bytes free), no permission (``EACCES``, ``EPERM``), a read-only
    file system (``EROFS``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        number = error.errno if isinstance(error, OSError) else None
        where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
        torch_write = any(text in str(error) for text in TORCH_WRITE_FAILED) and _disk_is_full(outputs)
        if number in NO_SPACE or any(text in str(error) for text in NO_SPACE_TEXT) or torch_write:
            return EnvironmentProblem(
                f"No space left on the disk{where}: free space there, or choose an output on another disk, and run "
                "again (a training run: with --resume_from_checkpoint last; its complete checkpoints are intact)."
            )
        if number in (errno.EACCES, errno.EPERM):
            return EnvironmentProblem(
                f"Permission denied{where}: give your user access to it (or choose another path) and run again."
            )
        if number == errno.EROFS:
            return EnvironmentProblem(f"Read-only file system{where}: choose an output on a writable disk.")
        error = error.__cause__ or error.__context__
    return None


DEBUG_VARIABLE = "CXRSEG_DEBUG"
"""Set to anything but empty or ``0`` to see the traceback of a user error too."""


def report(error: CxrsegError) -> int:
    """Print ``error`` as one line on stderr (after its traceback with ``CXRSEG_DEBUG=1``); return its exit status."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
