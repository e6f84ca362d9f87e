"""Atomic writing: every file and folder cxrseg writes appears whole or not at all (temporary name, then rename)."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask); mkstemp's are 0o600."""
    return 0o666 & ~_umask()


def _temporary_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. Returns ``path``."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, default_file_mode())
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
        fd, self.tmp = _temporary_beside(self.path)
        self.handle = os.fdopen(fd, "w", newline="")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(header)

    def writerow(self, row: Sequence) -> None:
        self.writer.writerow(row)

    def commit(self) -> None:
        self.handle.close()
        os.chmod(self.tmp, default_file_mode())
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


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary folder beside ``out``; it becomes ``out`` when the block ends without error.

    An ``out`` that exists by then is replaced (moved aside, then removed once the new folder is in place): the
    caller decides beforehand whether ``out`` may be replaced. On error (or interruption) the temporary folder is
    removed and ``out`` is left as it was. The new folder gets ``mkdir``'s permissions (0o777 less the umask).
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield building
        os.chmod(building, 0o777 & ~_umask())
        if out.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
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
