"""Whether the Hub can be reached for a repo, checked before any work starts; what names a Hub repo."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalTokenNotFoundError

from cxrseg.errors import HubAccessError

logger = logging.getLogger(__name__)


def check_hub_access(repo_id: str | None, token: str | None = None) -> str:
    """Check, before training, that ``repo_id`` can be pushed to; returns the full ``namespace/name`` id.

    One ``whoami`` call: it fails without network, without a token, or with an invalid one. The namespace must be
    the token's user or one of its organisations, and the token must not be read-only.
    Raises :class:`HubAccessError` with what to do.
    """
    if not repo_id:
        raise HubAccessError("push_to_hub is set but hub_model_id is empty: set hub_model_id: <user>/<model-name>.")
    if hub_constants.HF_HUB_OFFLINE:
        raise HubAccessError(
            "push_to_hub is set but HF_HUB_OFFLINE=1: unset it, or set push_to_hub: false and push the output folder "
            "later with `cxrseg push --model OUTPUT_DIR --repo-id ID`."
        )
    try:
        me = hub_api(token).whoami()
    except LocalTokenNotFoundError as error:
        raise HubAccessError(
            "push_to_hub is set but no Hugging Face token was found: run `hf auth login` or set HF_TOKEN."
        ) from error
    except Exception as error:  # any network or HTTP failure: the push at the end would fail too
        raise HubAccessError(
            f"push_to_hub is set but the Hugging Face Hub cannot be reached or refused the token "
            f"({type(error).__name__}: {error}). Check the network and the token (`hf auth whoami`), or set "
            "push_to_hub: false and push later with `cxrseg push`."
        ) from error
    user = me.get("name")
    namespaces = {user, *(org.get("name") for org in me.get("orgs", []))}
    namespace, _, name = repo_id.rpartition("/")
    full_id = repo_id if namespace else f"{user}/{name}"
    if namespace and namespace not in namespaces:
        raise HubAccessError(
            f"hub_model_id {repo_id!r}: the token belongs to {user!r}, who cannot write to {namespace!r} "
            f"(namespaces: {sorted(n for n in namespaces if n)})."
        )
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubAccessError(f"The Hugging Face token of {user!r} is read-only; use a token with write access.")
    return full_id


def is_hub_id(value: Any) -> bool:
    """Whether ``value`` names a Hub repo (``namespace/name``, not an existing local path)."""
    return isinstance(value, str) and not os.path.exists(value) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None


HUB_DATASET_PREFIX = "hf://datasets/"  # data_dir naming a Hub dataset, as huggingface_hub's HfFileSystem names it


def hub_dataset_id(data_dir: Any) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``data_dir`` names a Hub dataset, ``hf://datasets/NAMESPACE/NAME`` or
    ``hf://datasets/NAMESPACE/NAME@REVISION`` (a branch, tag or commit); None for anything else (a local folder).
    The prefix keeps a mistyped local path from turning into a network request."""
    if not isinstance(data_dir, str) or not data_dir.startswith(HUB_DATASET_PREFIX):
        return None
    repo_id, _, revision = data_dir[len(HUB_DATASET_PREFIX) :].rstrip("/").partition("@")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) is None:
        return None
    return repo_id, revision or None


def hub_api(token: str | None = None) -> HfApi:
    """The Hub client of every access check, push and checkpoint upload (the one place the tests replace)."""
    return HfApi(token=token)
