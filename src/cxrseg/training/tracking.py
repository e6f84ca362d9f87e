"""Start-up checks for experiment tracking (``report_to``): fail before training, saying what to do.

The transformers integrations only start their loggers when training begins; without a W&B key ``wandb.init`` then
stops the run with a bare ``UsageError`` (or waits at a prompt on a terminal). These checks run first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterable

from cxrseg.errors import TrackingSetupError

logger = logging.getLogger(__name__)

WANDB_LOCAL_MODES = ("offline", "dryrun", "disabled")


def check_tracking(report_to: Iterable[str] | str | None) -> None:
    """Raise :class:`TrackingSetupError` if an integration named in ``report_to`` cannot work here.

    wandb: the package is installed, and either ``WANDB_MODE`` is offline/disabled or an API key is configured
    (``WANDB_API_KEY``, ``wandb login``'s netrc entry, or a wandb settings file).
    tensorboard: ``tensorboard`` (or ``tensorboardX``) is installed.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "wandb" in names:
        _check_wandb()
    if "tensorboard" in names and not (_installed("tensorboard") or _installed("tensorboardX")):
        raise TrackingSetupError(
            "report_to includes tensorboard but it is not installed: `pip install tensorboard`, or remove it from "
            "report_to."
        )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _check_wandb() -> None:
    if not _installed("wandb"):
        raise TrackingSetupError("report_to includes wandb but it is not installed: `pip install wandb`.")
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in WANDB_LOCAL_MODES:
        logger.info("W&B mode %s: no API key needed.", mode)
        return
    import wandb

    # prompt=False: returns False instead of asking (or raising UsageError) when no key is configured.
    if wandb.login(verify=False, prompt=False):
        return
    from wandb.sdk import wandb_setup

    settings = wandb_setup.singleton().settings  # `wandb offline` / `wandb disabled` write a settings file
    if settings.mode in WANDB_LOCAL_MODES:
        return
    raise TrackingSetupError(
        "report_to includes wandb but no W&B API key is configured. Either\n"
        "  - log in: `wandb login` (or export WANDB_API_KEY=...), optionally WANDB_PROJECT=<project>;\n"
        "  - log locally: export WANDB_MODE=offline (upload later with `wandb sync <WANDB_DIR>/wandb/offline-run-*`);\n"
        "  - or turn it off: export WANDB_MODE=disabled, or --report_to none (or tensorboard)."
    )


def finish_tracking() -> None:
    """Finish the current W&B run, if any, so that the next training in this program starts its own (the
    transformers integration reuses a run left open)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
