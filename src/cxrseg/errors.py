"""The one error family: every error a user can cause is a :class:`CxrsegError` that knows its exit status.

Exit statuses, the same for ``run_train.py`` and every ``cxrseg`` command:

* **0**: the work finished and every input was used.
* **1**: the work finished but some inputs were skipped; they are listed (with the reason) in ``problems.csv``.
* **2**: a user error found before the work was done (bad arguments, recipe, data or model); nothing was produced.

A :class:`CxrsegError` is printed as one line (``error: ...``) by :func:`report` at the entry points
(``cxrseg.cli.main``, ``cxrseg.training.train.main``); any other exception is a bug and keeps its traceback. Library errors
(yaml, safetensors, the Hub, albumentations, argparse) are converted to one of these where cxrseg calls the library.
With the environment variable ``CXRSEG_DEBUG=1`` a user error also prints its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

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


DEBUG_VARIABLE = "CXRSEG_DEBUG"
"""Set to anything but empty or ``0`` to see the traceback of a user error too."""


def report(error: CxrsegError) -> int:
    """Print ``error`` as one line on stderr (after its traceback with ``CXRSEG_DEBUG=1``); return its exit status."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
