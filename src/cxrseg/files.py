"""Writing safely: every file and folder cxrseg writes appears whole or not at all (temporary name, then rename),
and cxrseg writes only where it may.

Output folders carry a marker, :data:`OUTPUT_MARKER` (``.cxrseg``, JSON ``{"kind": ...}``). Before writing, a
command checks its output (:func:`check_output_folder`, :func:`check_output_file`): a folder that is not empty is
written into or replaced only when its marker names the same kind of output, and no output may be, hold or lie
inside an input of the command. Unmarked folders, and files cxrseg cannot recognise as its own, belong to the user:
they are never deleted or overwritten.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cxrseg.errors import OutputError, OutputLockedError

logger = logging.getLogger(__name__)

OUTPUT_MARKER = ".cxrseg"
"""The file that marks a folder as cxrseg's output; it holds ``{"kind": KIND}``, one of the kinds below."""
DATASET = "dataset"
"""A PNG layout written by ``cxrseg prepare`` or ``cxrseg make-demo-data``."""
TRAINING_RUN = "training run"
"""The ``output_dir`` of ``run_train.py``."""
PREDICTIONS = "predictions"
"""The ``--out`` of ``cxrseg predict``."""
EVALUATION = "evaluation"
"""The ``--out`` of ``cxrseg evaluate``."""


def _unique_beside(path: Path, kind: str, create: Callable[[Path], object]) -> tuple[object, Path]:
    """``create(candidate)`` for a new hidden name ``.NAME.KIND-PID-RANDOM`` beside ``path``, retried while the name
    is taken; returns what it returned and the name. Files and folders made this way get ``open()``'s and
    ``mkdir``'s permissions (the umask applied by the kernel), unlike ``tempfile``'s private 0o600/0o700, and the
    process umask is never touched (threads write at the same time)."""
    while True:
        candidate = path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            return create(candidate), candidate
        except FileExistsError:
            continue


def _temporary_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd, tmp = _unique_beside(path, "tmp", lambda candidate: os.open(candidate, flags, 0o666))
    return fd, str(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. Returns ``path``."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class AtomicCsv:
    """A CSV written row by row to a temporary file and renamed into place by :meth:`commit` (or on leaving a
    ``with`` block without an exception); never half-written."""

    def __init__(self, path: str | os.PathLike, header: Sequence[str]) -> None:
        self.path = Path(path)
        if self.path.parent.is_dir():
            remove_leftovers(self.path)  # a killed earlier write of this CSV (its temporary file, beside the user's)
        fd, self.tmp = _temporary_beside(self.path)
        self.handle = os.fdopen(fd, "w", newline="")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(header)

    def writerow(self, row: Sequence) -> None:
        self.writer.writerow(row)

    def commit(self) -> None:
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.handle.close()
        Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> AtomicCsv:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def output_kind(folder: str | os.PathLike) -> str | None:
    """The kind of cxrseg output ``folder`` holds (its :data:`OUTPUT_MARKER`); None when it has no readable marker."""
    try:
        kind = json.loads((Path(folder) / OUTPUT_MARKER).read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None


TEMPORARY_FILE = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
"""The name of a temporary file of :func:`atomic_write_bytes` and :class:`AtomicCsv`: ``.NAME.tmp-PID-HEX``."""


def remove_temporary_files(folder: Path) -> None:
    """Remove, anywhere under the cxrseg output ``folder``, the temporary files of writes killed half-way (their
    process no longer runs)."""
    for path in folder.rglob(".*.tmp-*"):
        match = TEMPORARY_FILE.match(path.name)
        if match and path.is_file() and not path.is_symlink() and not _process_is_running(int(match["pid"])):
            logger.info("Removing %s, left by an interrupted run.", path)
            path.unlink(missing_ok=True)


def mark_output(folder: str | os.PathLike, kind: str) -> Path:
    """Create ``folder`` (and its parents) if needed and mark it as cxrseg's output of ``kind``; the temporary files
    a killed run left in it are removed (:func:`remove_temporary_files`). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(folder)
    if output_kind(folder) != kind:
        atomic_write_text(folder / OUTPUT_MARKER, json.dumps({"kind": kind}) + "\n")
    return folder


def _check_apart(out: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an ``out`` that is, holds or lies inside one of ``inputs`` (files or folders; None ignored)."""
    for given in inputs:
        if given is None:
            continue
        path = Path(given).resolve()
        if out == path:
            raise OutputError(f"The output {out} is also an input of this command; choose another output.")
        if path.is_relative_to(out):
            raise OutputError(f"The output {out} holds the input {given}; choose an output outside the inputs.")
        if out.is_relative_to(path) and path.is_dir():
            raise OutputError(
                f"The output {out} lies inside the input {given} (a rerun would read it as input); choose an output "
                "outside the inputs."
            )


def _check_writable(path: Path) -> None:
    """Refuse a ``path`` whose nearest existing folder cannot be written (or is a file)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise OutputError(f"Cannot write {path}: {existing} is a file, not a folder.")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {path}: no write permission in {folder}.")


def check_output_folder(
    out: str | os.PathLike,
    kind: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    may_hold: Iterable[str] = (),
) -> bool:
    """Check, before anything is written, that the folder ``out`` may receive cxrseg output of ``kind``.

    It may when it is absent, empty (or holds only files named in ``may_hold``: inputs a user may put there, such
    as a training run's ``splits.json``, which the caller reads and never rewrites), or marked with ``kind``; it
    must neither be, hold nor lie inside one of ``inputs``; and it (or its nearest existing parent) must be
    writable. Returns True when ``out`` already holds output of ``kind`` (the caller decides whether to add to it or
    replace it), False when it is absent or empty. Raises :class:`~cxrseg.errors.OutputError` saying what is wrong
    and what to do.
    """
    out = Path(out).resolve()
    _check_apart(out, inputs)
    _check_writable(out)
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputError(f"{out} is a file; the output must be a folder (new or empty, or one cxrseg wrote).")
    check_not_locked(out)
    if all(path.name in (*may_hold, LOCK_FILE) and path.is_file() for path in out.iterdir()):
        return False
    found = output_kind(out)
    if found is None:
        raise OutputError(
            f"{out} holds files that cxrseg did not write (it has no {OUTPUT_MARKER} marker), and cxrseg never "
            "overwrites or deletes your files: choose a new or empty folder."
        )
    if found != kind:
        raise OutputError(f"{out} holds a cxrseg {found}, not {kind}: choose a new or empty folder.")
    return True


def check_output_file(
    path: str | os.PathLike,
    written_by_cxrseg: Callable[[Path], bool],
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Check, before anything is written, that one output file may be written at ``path``: not a folder, not one of
    ``inputs`` nor inside an input folder, in a writable folder, and when it exists a file that
    ``written_by_cxrseg(path)`` recognises as cxrseg's own. Returns ``path``; raises
    :class:`~cxrseg.errors.OutputError`."""
    path = Path(path)
    resolved = path.resolve()
    _check_apart(resolved, inputs)
    _check_writable(resolved)
    if resolved.is_dir():
        raise OutputError(f"{path} is a folder; give the path of a file to write.")
    if resolved.exists() and not written_by_cxrseg(resolved):
        raise OutputError(
            f"{path} exists and cxrseg did not write it; cxrseg never overwrites your files: remove it or choose "
            "another path."
        )
    return path


LOCK_FILE = ".cxrseg.lock"
"""The lock file of an output folder in use (:func:`lock_output`); it holds the process id of the run that locked it
last. The file stays; only the lock on it (which the OS releases when that process ends) means a run is going on."""


_HELD_LOCKS: set[int] = set()
"""The descriptors of the output locks this process holds."""


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's lock descriptors. An flock belongs
    to the open file description, so a child's copy would keep the folder locked after the parent is killed, until
    the orphaned child noticed and exited (seconds): a rerun right after ``kill -9`` would be refused."""
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class OutputLock:
    """An advisory ``fcntl.flock`` on ``FOLDER/.cxrseg.lock``, held from :func:`lock_output` until :meth:`release`
    or the end of the process (the OS releases it when the process dies, however it dies, so a killed run never
    blocks the next one; forked children do not inherit it)."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self.fd = folder, fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        if self.fd in _HELD_LOCKS:  # not in a forked child, which closed its copy already
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = -1

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_locked(folder: str | os.PathLike) -> None:
    """Raise :class:`~cxrseg.errors.OutputLockedError` when a run holds ``folder``'s lock; writes nothing (a check
    for the start of a command, long before :func:`lock_output`)."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (or an unreadable one, which lock_output will report)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _locked(Path(folder), fd) from None
    finally:
        os.close(fd)


def _locked(folder: Path, fd: int) -> OutputLockedError:
    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
    return OutputLockedError(
        f"{folder} is in use by another cxrseg run (process {holder}); wait for it to finish, stop it, or choose "
        "another output folder."
    )


def lock_output(folder: str | os.PathLike) -> OutputLock:
    """Create ``folder`` if needed and take its lock, so no second run writes into it at the same time; raise
    :class:`~cxrseg.errors.OutputLockedError` naming the folder and the process holding the lock when another run
    holds it. Call it after every check and before the first write: a refused run has written nothing (but the
    folder it was about to create)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _locked(folder, fd)
        os.close(fd)
        raise error from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return OutputLock(folder, fd)


def _process_is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(out: Path) -> None:
    """Remove the temporary files and folders that writes of ``out`` (:func:`atomic_folder`, :func:`atomic_write_bytes`,
    :class:`AtomicCsv`) left beside it when they were killed (the process id in their name no longer runs): only
    names cxrseg made for ``out``, ``.OUT.tmp-PID-HEX`` files and ``.OUT.partial-PID-HEX`` or
    ``.OUT.previous-PID-HEX`` folders, never anything else of the folder. The old folder of a replacement killed
    half-way goes back to ``out`` first when ``out`` is missing."""
    leftover_name = re.compile(rf"^\.{re.escape(out.name)}\.(?P<what>partial|previous|tmp)-(?P<pid>\d+)-[0-9a-f]{{8}}$")
    for leftover in sorted(out.parent.iterdir()):
        match = leftover_name.match(leftover.name)
        if match is None or _process_is_running(int(match["pid"])):
            continue
        if match["what"] == "tmp":
            if leftover.is_file() and not leftover.is_symlink():
                logger.info("Removing %s, left by an interrupted run.", leftover)
                leftover.unlink(missing_ok=True)
            continue
        if not leftover.is_dir():
            continue
        kept = leftover / out.name
        if match["what"] == "previous" and kept.is_dir() and not out.exists():
            kept.rename(out)
        logger.info("Removing %s, left by an interrupted run.", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_folder(out: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Build a folder in a temporary folder beside ``out``; marked as cxrseg's output of ``kind``, it becomes
    ``out`` when the block ends without error.

    An ``out`` that exists by then is replaced (moved aside, then removed once the new folder is in place) only
    when it is empty or marked with ``kind``; otherwise :class:`~cxrseg.errors.OutputError` is raised before the
    block runs (callers check with :func:`check_output_folder` first, and decide whether a marked ``out`` may be
    replaced). On error (or interruption) the temporary folder is removed and ``out`` is left as it was; the
    temporary folders of a killed earlier run are removed first (:func:`remove_leftovers`). The new folder gets
    ``mkdir``'s permissions (0o777 less the umask).
    """
    out = Path(out).absolute()
    if out.parent.is_dir():
        remove_leftovers(out)
    check_output_folder(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    _, building = _unique_beside(out, "partial", os.mkdir)
    try:
        yield building
        mark_output(building, kind)
        if out.exists():
            _, previous = _unique_beside(out, "previous", os.mkdir)
            out.rename(previous / out.name)
            try:
                building.rename(out)
            except BaseException:
                (previous / out.name).rename(out)  # put the old folder back before anything is removed
                previous.rmdir()
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            building.rename(out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
