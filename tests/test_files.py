"""Atomic files and folders: a failed or interrupted write leaves nothing behind and the user's files as they were;
output folders carry cxrseg's marker, and only marked folders are replaced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cxrseg.errors import OutputError
from cxrseg.files import (
    DATASET,
    OUTPUT_MARKER,
    PREDICTIONS,
    atomic_folder,
    check_output_file,
    check_output_folder,
    mark_output,
    output_kind,
)


def test_atomic_folder_appears_complete_marked_with_mkdir_permissions(tmp_path):
    out = tmp_path / "nested" / "out"
    with atomic_folder(out, DATASET) as building:
        assert building.parent == out.parent and not out.exists()
        (building / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    assert output_kind(out) == DATASET
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_atomic_folder_follows_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out", DATASET) as building:
            (building / "a.txt").write_text("a")
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_leaves_nothing_behind_on_error(tmp_path, error):
    with pytest.raises(error):
        with atomic_folder(tmp_path / "out", DATASET) as building:
            (building / "half.txt").write_text("half")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_its_own_folder_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, DATASET) as building:
        (building / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out, DATASET) as building:
            (building / "new.txt").write_text("new")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "old.txt"]
    with atomic_folder(out, DATASET) as building:
        (building / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("marker", [None, PREDICTIONS, "not json"])
def test_atomic_folder_never_replaces_a_folder_without_its_marker(tmp_path, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    if marker == PREDICTIONS:
        mark_output(out, marker)
    elif marker is not None:
        (out / OUTPUT_MARKER).write_text(marker)
    with pytest.raises(OutputError, match="choose a new or empty folder"):
        with atomic_folder(out, DATASET):
            pytest.fail("the block must not run")
    assert (out / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_killed_atomic_folder_leaves_a_partial_folder_that_the_next_one_removes(tmp_path):
    """kill -9 in the middle of the block (no cleanup runs), then the same write again."""
    script = (
        "import os, signal, sys\n"
        "from cxrseg.files import atomic_folder\n"
        "with atomic_folder(sys.argv[1], 'dataset') as building:\n"
        "    (building / 'half.txt').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = tmp_path / "out"
    assert subprocess.run([sys.executable, "-c", script, str(out)]).returncode == -9
    assert [p.name.startswith(".out.partial-") for p in tmp_path.iterdir()] == [True]
    with atomic_folder(out, DATASET) as building:
        (building / "whole.txt").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_output_folder(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    assert check_output_folder(tmp_path / "new", DATASET, inputs=[data]) is False
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", DATASET, inputs=[data]) is False
    assert check_output_folder(mark_output(tmp_path / "mine", DATASET), DATASET) is True
    for out, message in [
        (data, "is also an input"),
        (tmp_path, "holds the input"),
        (data / "images" / "out", "lies inside the input"),
        (tmp_path / "mine", "holds a cxrseg dataset, not predictions"),
    ]:
        with pytest.raises(OutputError, match=message):
            check_output_folder(out, PREDICTIONS, inputs=[data])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(tmp_path / "file", DATASET)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "out", DATASET)


def test_check_output_file(tmp_path):
    (tmp_path / "theirs.png").write_text("theirs")
    (tmp_path / "ours.png").write_text("ours")
    ours = lambda path: path.read_text() == "ours"  # noqa: E731
    assert check_output_file(tmp_path / "new.png", ours) == tmp_path / "new.png"
    assert check_output_file(tmp_path / "ours.png", ours) == tmp_path / "ours.png"
    with pytest.raises(OutputError, match="cxrseg did not write it"):
        check_output_file(tmp_path / "theirs.png", ours)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, ours)
    with pytest.raises(OutputError, match="is also an input"):
        check_output_file(tmp_path / "ours.png", ours, inputs=[tmp_path / "ours.png"])
