"""Checkpoints to the Hub during training (``hub_strategy``), and back: resuming from a Hub repo's checkpoint.

The transformers Trainer's own push stays off (it would upload ``training_args.bin``, TensorBoard logs and its own
card); :class:`HubCheckpointPush` gives ``hub_strategy`` the Trainer's meanings with cxrseg's card and redaction
(:func:`cxrseg.hub.push.shared_file`: no token, no local path, never ``training_args.bin``). At each save
(``checkpoint-N``):

- ``every_save``: one commit with the model of ``checkpoint-N`` (``config.json``, weights,
  ``preprocessor_config.json``), ``recipe.yaml``, ``splits.json`` and a model card showing that checkpoint's last
  evaluation;
- ``checkpoint``: the same commit also holds the checkpoint folder as ``last-checkpoint/`` (what
  ``--resume_from_checkpoint <repo id>`` continues from, on any machine: :func:`download_checkpoint`);
- ``all_checkpoints``: the checkpoint folder keeps its name, ``checkpoint-N/``;
- ``end``: nothing during training.

The final commit of every strategy is :func:`cxrseg.hub.push.push_folder` at the end of the run. Commits run one at a
time,
in order, in ``HfApi``'s background thread (``run_as_future``), so training does not wait for the network; as in the
Trainer, a save that comes while the previous commit is still running is not pushed unless ``hub_always_push``.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from huggingface_hub import CommitOperationAdd, snapshot_download
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy

from cxrseg.constants import CARD_FILENAME, CHECKPOINT_NAME, RECIPE_FILENAME, SPLITS_FILENAME
from cxrseg.errors import HubAccessError
from cxrseg.hub.access import hub_api
from cxrseg.hub.card import model_card
from cxrseg.hub.push import shared_file
from cxrseg.hub.redaction import redact_text

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last-checkpoint"
"""The folder of the repo that holds the newest checkpoint with ``hub_strategy: checkpoint`` (the Trainer's name)."""
MODEL_FILES = re.compile(r"config\.json|preprocessor_config\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")
"""The files of a checkpoint that make the model: pushed to the repo's top level at each save."""
RUN_FILES = (RECIPE_FILENAME, SPLITS_FILENAME)
"""The files of the output folder that describe the run: pushed with every save."""
NEVER_UPLOADED = ("training_args.bin",)  # a pickle of TrainingArguments: local paths, and a token if one was set


def checkpoint_upload_plan(
    checkpoint: str | os.PathLike, output_dir: str | os.PathLike, repo_id: str, strategy: str, token: str | None = None
) -> dict[str, bytes | Path]:
    """What the save of ``checkpoint`` (``OUTPUT_DIR/checkpoint-N``) uploads with ``strategy``: path in the repo →
    bytes (redacted text) or the local file (binary). See the module docstring."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    plan = {
        path.name: shared_file(path, output_dir, token)
        for path in sorted(checkpoint.iterdir())
        if path.is_file() and MODEL_FILES.fullmatch(path.name)
    }
    plan.update(
        {name: shared_file(output_dir / name, output_dir, token) for name in RUN_FILES if (output_dir / name).is_file()}
    )
    card = model_card(output_dir, repo_id, checkpoint=checkpoint)
    plan[CARD_FILENAME] = redact_text(card, output_dir, token).encode()
    if strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        folder = LAST_CHECKPOINT if strategy == HubStrategy.CHECKPOINT else checkpoint.name
        for path in sorted(checkpoint.rglob("*")):
            if path.is_file() and path.name not in NEVER_UPLOADED:
                plan[f"{folder}/{path.relative_to(checkpoint).as_posix()}"] = shared_file(path, output_dir, token)
    return plan


class HubCheckpointPush(TrainerCallback):
    """Pushes each save to ``repo_id`` as ``strategy`` (``every_save``, ``checkpoint``, ``all_checkpoints``) says;
    see the module docstring. ``on_train_end`` waits for the commits still running.

    The token stays here (never in ``TrainingArguments``, which checkpoints pickle); None uses the login.
    ``private`` applies when the repo is created; ``always_push``: push every save even while the previous push runs.
    """

    def __init__(
        self,
        repo_id: str,
        strategy: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        always_push: bool = False,
    ) -> None:
        self.repo_id, self.strategy, self.token = repo_id, HubStrategy(strategy), token
        self.private, self.always_push = private, always_push
        self.api = hub_api(token)
        self.pushes: list[Future] = []
        self._repo_created = False

    def on_save(self, args, state, control, **kwargs) -> None:
        if not state.is_world_process_zero or self.strategy == HubStrategy.END:
            return
        if self.pushes and not self.pushes[-1].done() and not self.always_push:
            logger.info(
                "Step %d not pushed: the previous push to %s is still running.", state.global_step, self.repo_id
            )
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        plan = checkpoint_upload_plan(checkpoint, args.output_dir, self.repo_id, self.strategy, self.token)
        # Open the binary files now: an open file stays readable after the Trainer deletes an old checkpoint
        # (save_total_limit), and hashing and uploading them happen in the background thread.
        files = {name: content.open("rb") if isinstance(content, Path) else content for name, content in plan.items()}
        message = f"Training in progress, step {state.global_step}"
        logger.info("Pushing %s to %s in the background: %s", checkpoint.name, self.repo_id, ", ".join(files))
        self.pushes.append(self.api.run_as_future(self._commit, files, message))

    def _commit(self, files: dict[str, bytes | BinaryIO], message: str) -> str:
        """One commit of ``files`` (run in the background thread); closes the open files."""
        try:
            if not self._repo_created:
                self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                self._repo_created = True
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
            return self.api.create_commit(self.repo_id, operations, commit_message=message).commit_url
        finally:
            for data in files.values():
                if not isinstance(data, bytes):
                    data.close()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        for push in self.pushes:
            error = push.exception()  # waits for it to finish
            if error is not None:  # the run goes on: the final push at the end reports a Hub that stays unreachable
                logger.warning("A checkpoint push to %s failed: %s: %s", self.repo_id, type(error).__name__, error)


def download_checkpoint(repo_id: str, token: str | None = None) -> Path:
    """The newest checkpoint of Hub repo ``repo_id``, downloaded to the Hugging Face cache: ``last-checkpoint/``
    (``hub_strategy: checkpoint``), else the ``checkpoint-N/`` with the largest N (``all_checkpoints``).

    Raises :class:`HubAccessError` when the repo cannot be read or holds no checkpoint.
    """
    try:
        paths = hub_api(token).list_repo_files(repo_id)
        folders = {path.split("/", 1)[0] for path in paths if "/" in path}
        numbered = sorted((int(CHECKPOINT_NAME.match(f).group(1)), f) for f in folders if CHECKPOINT_NAME.match(f))
        folder = LAST_CHECKPOINT if LAST_CHECKPOINT in folders else numbered[-1][1] if numbered else None
        if folder is not None:
            logger.info("Downloading %s/%s from the Hub to resume from it.", repo_id, folder)
            local = Path(snapshot_download(repo_id, allow_patterns=[f"{folder}/*"], token=token)) / folder
    except Exception as error:  # network, offline mode, missing or private repo: the Hub raises many types
        raise HubAccessError(
            f"resume_from_checkpoint {repo_id!r} is not a local folder, and as a Hub repo it cannot be read "
            f"({type(error).__name__}: {error})."
        ) from error
    if folder is None:
        raise HubAccessError(
            f"resume_from_checkpoint {repo_id!r}: the repo holds no {LAST_CHECKPOINT}/ or checkpoint-N/ folder; "
            "train with push_to_hub: true and hub_strategy: checkpoint to push one."
        )
    return local
