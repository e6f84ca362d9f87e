"""The output folder as a Hub model repo: copies without secrets or local paths, and the push.

What is uploaded (:func:`upload_plan`): the top-level files of the output folder whose suffix is in
:data:`UPLOAD_SUFFIXES` — ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, ``postprocess.json``,
``recipe.yaml``, ``README.md`` (the card), ``splits.json``, ``*_results.json``, ``trainer_state.json``, plots — and
never a subfolder (``checkpoint-N/``, ``runs/``, ``wandb/``) nor ``training_args.bin`` (a pickle holding local paths
and, when set, the Hub token). Text files are uploaded as redacted copies (the local files stay as they are):
absolute paths in ``recipe.yaml`` become relative to the working directory, or only their last component when
outside it; the output folder, working directory and home directory are cut out of every text file; a token that
somehow reached a file is replaced. The push is one commit through ``HfApi`` (``create_repo`` + ``create_commit``);
the transformers Trainer's own push is not used (it would upload checkpoints and write its own card).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd

from cxrseg.constants import RECIPE_FILENAME
from cxrseg.errors import HubAccessError, ModelLoadError
from cxrseg.hub.access import hub_api
from cxrseg.hub.card import write_model_card
from cxrseg.hub.redaction import redact_text, shareable_recipe_text

logger = logging.getLogger(__name__)


UPLOAD_SUFFIXES = (".json", ".safetensors", ".yaml", ".md", ".png")
TEXT_SUFFIXES = (".json", ".yaml", ".md")


def upload_plan(folder: str | os.PathLike, token: str | None = None) -> dict[str, bytes | Path]:
    """What a push uploads: path in the repo → bytes (redacted text) or the local file (binary). See module doc."""
    folder = Path(folder)
    return {
        path.name: shared_file(path, folder, token)
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix in UPLOAD_SUFFIXES
    }


def shared_file(path: Path, folder: Path, token: str | None = None) -> bytes | Path:
    """What is uploaded of ``path``: a text file (:data:`TEXT_SUFFIXES`) as redacted bytes (:func:`redact_text`
    with ``folder``, the output folder; ``recipe.yaml`` as :func:`shareable_recipe`), any other file as it is."""
    if path.suffix not in TEXT_SUFFIXES:
        return path
    text = path.read_text()
    if path.name == RECIPE_FILENAME:
        text = shareable_recipe_text(text)
    return redact_text(text, folder, token).encode()


def check_model_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path if it holds a saved model (``config.json`` and ``*.safetensors``), else
    :class:`~cxrseg.errors.ModelLoadError`."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} has no config.json and *.safetensors: not a saved model folder.")
    return folder


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload cxrseg model",
) -> str:
    """Write the model card for ``repo_id`` into ``folder``, then upload :func:`upload_plan` as one commit.

    Creates the repo if needed (``private`` applies only then). Returns the commit URL.
    """
    folder = check_model_folder(folder)
    write_model_card(folder, repo_id)
    plan = upload_plan(folder, token)
    api = hub_api(token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in plan.items()]
    logger.info("Pushing %d files to https://huggingface.co/%s: %s", len(plan), repo_id, ", ".join(plan))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    except Exception as error:  # the network or the Hub failed: the local folder is complete, say how to retry
        raise HubAccessError(
            f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). The output folder is complete; retry "
            f"with `cxrseg push --model OUTPUT_DIR --repo-id {repo_id}`."
        ) from error
    return getattr(commit, "commit_url", str(commit))
