"""Audit hooks for the processes of a launched run: a ``sitecustomize.py`` holding ``import tests.process_hooks`` on
PYTHONPATH (with the repository root) loads this module into every Python process the run starts. Environment
variables switch the hooks on:

* ``AUDIT_ROOT``, ``AUDIT_DIR``: log each Python-level write under ``AUDIT_ROOT`` (open for writing, mkdir, rmdir,
  rename/replace, remove, rmtree) to ``AUDIT_DIR/rank{RANK}.txt`` as ``event path``, per rank.
* ``KILL_ROOT``, ``KILL_PIDS``, ``KILL_RANK``, ``KILL_STEP``, ``KILL_AFTER``: every process registers its pid in the
  folder ``KILL_PIDS``. In the main process of rank ``KILL_RANK`` (empty: the one process of a run without ranks,
  never a launcher), from the first write under ``KILL_ROOT`` whose path
  has a ``checkpoint-KILL_STEP`` component on, count the writes under ``KILL_ROOT``; just before the ``KILL_AFTER``-th
  is done, SIGKILL the process group of every registered process (the launcher's, each rank's with its data-loader
  workers), its own last: a ``kill -9`` of the whole run at a reproducible point of a checkpoint save.

* ``PAUSE_ROOT``, ``PAUSE_NAME``, ``PAUSE_DIR``, ``PAUSE_RANK``: in the main process of rank ``PAUSE_RANK`` (empty: the
  one process of a run without ranks), just before the first write under ``PAUSE_ROOT`` of a file named
  ``PAUSE_NAME``, create ``PAUSE_DIR/paused`` (holding the process id) and wait until ``PAUSE_DIR/go`` exists: a run
  held at a known point (e.g. just after it took its output folder's lock) while a test starts another.

Writes done outside Python are not seen: safetensors writes from Rust, ``torch.save`` from C++.
"""

from __future__ import annotations

import os
import signal
import sys
import time

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def written_path(event: str, args: tuple) -> str | None:
    """The absolute path that audit ``event`` (with its ``args``) writes, or None if it writes nothing."""
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
    elif event in ("os.mkdir", "os.rmdir", "os.remove", "shutil.rmtree"):
        path, writing = args[0], True
    elif event == "os.rename":  # also os.replace: the destination is what gets written
        path, writing = args[1], True
    else:
        return None
    if writing and isinstance(path, (str, os.PathLike)):
        return os.path.abspath(os.fspath(path))
    return None


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def install_audit_log(root: str, log_dir: str, rank: str) -> None:
    log = open(os.path.join(log_dir, f"rank{rank}.txt"), "a", buffering=1)

    def hook(event: str, args: tuple) -> None:
        path = written_path(event, args)
        if path is not None and under(path, root):
            log.write(f"{event} {os.path.relpath(path, root)}\n")

    sys.addaudithook(hook)


def kill_run(pids: str) -> None:
    """SIGKILL the process group of every pid registered in ``pids``, this process's group last."""
    groups = []
    for name in os.listdir(pids):
        try:
            groups.append(os.getpgid(int(name)))
        except ProcessLookupError:
            continue
    own = os.getpgid(0)
    for group in sorted(set(groups) - {own}):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    os.killpg(own, signal.SIGKILL)


def install_kill(root: str, pids: str, step: str, after: int) -> None:
    main_pid, target, seen = os.getpid(), f"checkpoint-{step}", [0]

    def hook(event: str, args: tuple) -> None:
        path = written_path(event, args)
        if path is None or os.getpid() != main_pid or not under(path, root):
            return
        if seen[0] or target in path.split(os.sep):
            seen[0] += 1
            if seen[0] == after:
                kill_run(pids)

    sys.addaudithook(hook)


def install_pause(root: str, name: str, folder: str) -> None:
    main_pid, done = os.getpid(), [False]

    def hook(event: str, args: tuple) -> None:
        path = written_path(event, args)
        if done[0] or path is None or os.getpid() != main_pid or not under(path, root):
            return
        if os.path.basename(path) != name:
            return
        done[0] = True
        with open(os.path.join(folder, "paused.tmp"), "w") as file:
            file.write(str(os.getpid()))
        os.replace(os.path.join(folder, "paused.tmp"), os.path.join(folder, "paused"))
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.05)

    sys.addaudithook(hook)


_rank = os.environ.get("RANK", "")
if os.environ.get("AUDIT_ROOT") and _rank:
    install_audit_log(os.environ["AUDIT_ROOT"], os.environ["AUDIT_DIR"], _rank)
if os.environ.get("KILL_ROOT"):
    open(os.path.join(os.environ["KILL_PIDS"], str(os.getpid())), "w").close()
    if _rank == os.environ["KILL_RANK"]:
        install_kill(
            os.path.abspath(os.environ["KILL_ROOT"]),
            os.environ["KILL_PIDS"],
            os.environ["KILL_STEP"],
            int(os.environ["KILL_AFTER"]),
        )
if os.environ.get("PAUSE_ROOT") and _rank == os.environ.get("PAUSE_RANK", ""):
    install_pause(os.path.abspath(os.environ["PAUSE_ROOT"]), os.environ["PAUSE_NAME"], os.environ["PAUSE_DIR"])
