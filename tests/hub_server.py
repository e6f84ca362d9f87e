"""A local Hugging Face Hub for the tests: pushed repos served over HTTP by olah, uploads through a replaced HfApi.

- :class:`FakeHub` replaces ``HfApi`` for what no local server implements (the upload API: ``create_repo``,
  ``create_commit``, ``whoami``). Each commit becomes a git commit on branch ``main`` of
  ``MIRRORS/models/<namespace>/<name>`` (a dataset repo: ``MIRRORS/datasets/...``); everything else
  (``run_as_future``, listing, downloads) is the real HfApi.
- :func:`serve` starts this file as a script: olah 0.5.4 in offline mode serving the git repositories under
  ``MIRRORS`` (its ``mirrors-path``), on 127.0.0.1 and a free port. With ``HF_ENDPOINT`` set to it,
  ``from_pretrained``, ``hf_hub_download`` and ``snapshot_download`` download what the FakeHub committed.

Where plain olah differs from the Hub, :func:`hub_answers` (a middleware, the whole workaround) answers as the Hub
does. Both cases are checked against huggingface_hub's documented behaviour in tests/hub/test_hub_http.py:

- A file missing from a mirror: olah answers HEAD with ``401 RepoNotFound`` and GET with a 500; the Hub answers
  ``404`` with ``X-Error-Code: EntryNotFound``, which huggingface_hub raises as ``EntryNotFoundError``
  (``RemoteEntryNotFoundError``) and transformers treats as "optional file absent". Without this
  ``AutoImageProcessor.from_pretrained`` fails on its first probe (``processor_config.json``), and so does
  ``pipeline()``.
- ``GET /api/models/<id>`` (``model_info`` without a revision): olah answers ``401``; the Hub answers the info of
  ``main``, which olah serves at ``/api/models/<id>/revision/main``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.request import urlopen

from huggingface_hub import HfApi
from huggingface_hub.hf_api import future_compatible

ME = {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "cxrseg tests",
    "GIT_AUTHOR_EMAIL": "tests@cxrseg.invalid",
    "GIT_COMMITTER_NAME": "cxrseg tests",
    "GIT_COMMITTER_EMAIL": "tests@cxrseg.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,  # no user hooks, signing or default-branch settings
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=folder, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------- the upload API
class FakeHub:
    """Stands in for the ``HfApi`` class (``monkeypatch.setattr(cxrseg.hub.access, "HfApi", hub)``).

    ``hub(token=...)`` returns a real ``HfApi`` whose ``whoami`` answers :data:`ME` (or raises ``error``) and whose
    ``create_repo``/``create_commit`` record a call in ``calls`` and write git repositories under ``mirrors``.
    """

    def __init__(self, mirrors: Path, me: dict | None = None, error: Exception | None = None) -> None:
        self.mirrors, self.me, self.error = mirrors, me or ME, error
        self.calls: list[tuple] = []
        self.lock = threading.RLock()  # commits from several HfApi threads land one after the other, as on the Hub

    def __call__(self, token: str | None = None, **kwargs) -> HfApi:
        return _FakeHfApi(self, token=token, **kwargs)

    def repo(self, repo_id: str, repo_type: str | None = None) -> Path:
        """The working tree of ``repo_id``'s git repository (what the server serves at ``main``); ``repo_type``
        "dataset" for a dataset repo."""
        return self.mirrors / ("datasets" if repo_type == "dataset" else "models") / repo_id

    def log(self, repo_id: str) -> list[tuple[str, str]]:
        """(commit sha, message) of each commit on ``main``, oldest first."""
        lines = git(self.repo(repo_id), "log", "--reverse", "--format=%H %s", "main").splitlines()
        return [tuple(line.split(" ", 1)) for line in lines]

    def files(self, repo_id: str, revision: str = "main") -> set[str]:
        """The paths in ``repo_id`` at ``revision``."""
        return set(git(self.repo(repo_id), "ls-tree", "-r", "--name-only", revision).splitlines())

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """The content of ``path`` in ``repo_id`` at ``revision``."""
        done = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=self.repo(repo_id), capture_output=True, check=True
        )
        return done.stdout

    def create_repo(self, repo_id: str, repo_type: str | None = None) -> None:
        folder = self.repo(repo_id, repo_type)
        with self.lock:
            if not (folder / ".git").is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                git(folder, "init", "--quiet", "--initial-branch=main")

    def commit(self, repo_id: str, operations, message: str, repo_type: str | None = None) -> str:
        """Write the operations' files into the working tree and commit them; returns the commit sha."""
        with self.lock:
            self.create_repo(repo_id, repo_type)
            folder = self.repo(repo_id, repo_type)
            for op in operations:
                path = folder / op.path_in_repo
                path.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as file:
                    path.write_bytes(file.read())
            git(folder, "add", "--all")
            git(folder, "commit", "--quiet", "--allow-empty", "--message", message)
            return git(folder, "rev-parse", "HEAD")


class _FakeHfApi(HfApi):
    def __init__(self, hub: FakeHub, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hub = hub

    def whoami(self, *args, **kwargs) -> dict:
        self.hub.calls.append(("whoami",))
        if self.hub.error is not None:
            raise self.hub.error
        return self.hub.me

    def create_repo(
        self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False, repo_type=None, **kwargs
    ):
        self.hub.calls.append(("create_repo", repo_id, private) + ((repo_type,) if repo_type else ()))
        self.hub.create_repo(repo_id, repo_type)

    @future_compatible  # as HfApi.create_commit: run_as_future=True runs it in this HfApi's background thread
    def create_commit(
        self, repo_id: str, operations, *, commit_message: str, run_as_future: bool = False, repo_type=None, **kwargs
    ):
        operations = list(operations)
        self.hub.calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
        sha = self.hub.commit(repo_id, operations, commit_message, repo_type)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", oid=sha)


# ---------------------------------------------------------------------------------------------- the server
RESOLVE = re.compile(r"/(?:models/)?(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
MODEL_INFO = re.compile(r"/api/models/(?P<repo_id>[^/]+/[^/]+)/?")


def entry_missing(mirrors: Path, repo_id: str, revision: str, path: str) -> bool:
    """Whether the mirror of ``repo_id`` has ``revision`` but no file ``path`` in it (a missing repo or revision is
    left to olah)."""
    folder = mirrors / "models" / repo_id
    if not (folder / ".git").is_dir():
        return False
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{revision}:{path}"], cwd=folder, env={**os.environ, **GIT_ENV}, capture_output=True
    )
    has_revision = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], cwd=folder, capture_output=True
    )
    return found.returncode != 0 and has_revision.returncode == 0


def hub_answers(mirrors: Path):
    """The middleware that answers the two requests above as the Hub does (see the module docstring)."""
    from starlette.responses import Response

    async def middleware(request, call_next):
        path = request.url.path
        resolve = RESOLVE.fullmatch(path)
        if resolve and request.method in ("GET", "HEAD") and entry_missing(mirrors, **resolve.groupdict()):
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}
            return Response(status_code=404, headers=headers)
        info = MODEL_INFO.fullmatch(path)
        if info and request.method == "GET":
            request.scope["path"] = f"/api/models/{info['repo_id']}/revision/main"
        return await call_next(request)

    return middleware


def main(mirrors: str, workdir: str) -> None:
    """Serve ``mirrors`` with olah (offline) and :func:`hub_answers`; prints the port once it is bound."""
    import uvicorn

    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = workdir_path / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f"repos-path = {str(workdir_path / 'cache')!r}\nmirrors-path = [{str(Path(mirrors))!r}]\n"
        "metadata-cache-ttl = 0\n"
        "[accessibility]\noffline = true\n"
    )
    # olah builds its configuration from OLAH_CONFIG when imported (its multi-worker start-up path).
    os.environ["OLAH_CONFIG"] = str(config)
    os.environ["OLAH_LOG_PATH"] = str(workdir_path / "logs")
    print(port, flush=True)  # before olah is imported: its logger takes over stdout
    from olah.server import app

    tolerate_binary_files_of_pointer_size()
    app.middleware("http")(hub_answers(Path(mirrors)))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def tolerate_binary_files_of_pointer_size() -> None:
    """olah 0.5.4 reads every 121-149-byte file as a Git LFS pointer in UTF-8 and answers HTTP 500 for a binary file of
    that size (a small PNG, e.g. an empty prior mask); the Hub lists it as a plain file, so does this server."""
    from olah.mirror.repos import LocalMirrorRepo

    path_info = LocalMirrorRepo._get_path_info

    class NotAPointer:
        """The entry, with content that reads as empty: olah's pointer check does not match, the rest is the entry's."""

        def __init__(self, entry) -> None:
            self._entry = entry

        def __getattr__(self, name: str):
            return getattr(self._entry, name)

        @property
        def data_stream(self) -> io.BytesIO:
            return io.BytesIO(b"")

    def tolerant(self, entry, expand: bool = False):
        try:
            return path_info(self, entry, expand)
        except UnicodeDecodeError:
            return path_info(self, NotAPointer(entry), expand)

    LocalMirrorRepo._get_path_info = tolerant


@contextlib.contextmanager
def serve(mirrors: Path, workdir: Path, timeout: float = 60.0) -> Iterator[str]:
    """Run :func:`main` in a subprocess; yields the endpoint (``http://127.0.0.1:PORT``) once it answers."""
    mirrors.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, __file__, str(mirrors), str(workdir)], stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        port = process.stdout.readline().strip()
        if not port:
            raise RuntimeError(f"the hub server did not start: see {workdir / 'server.log'}")
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                urlopen(endpoint + "/api/models/not/served/revision/main", timeout=5).close()
                break
            except OSError as error:  # not listening yet, or any HTTP answer (an HTTP error is an answer)
                if getattr(error, "code", None) is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the hub server did not start: see {workdir / 'server.log'}") from error
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def use_endpoint(monkeypatch, endpoint: str, home: Path) -> None:
    """Point this process (huggingface_hub and datasets read their settings at import: patch them) and its subprocesses
    (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE=0``) at ``endpoint``, with an empty cache in ``home``.
    transformers' shared ``HfApi`` keeps the endpoint it was made with (a test before this one may have made it):
    dropped, so that transformers makes its own at ``endpoint`` (else its calls go to huggingface.co and retry for
    most of a minute before giving up)."""
    import transformers.utils.hub
    from huggingface_hub import constants

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # datasets reads its own copies of these settings at import (load_dataset of a Hub dataset id).
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")


if __name__ == "__main__":
    main(*sys.argv[1:])
