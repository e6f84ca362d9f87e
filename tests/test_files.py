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
    AtomicCsv,
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


def test_a_killed_csv_write_leaves_a_temporary_file_that_the_next_write_of_it_removes(tmp_path):
    """kill -9 while a CSV is written beside the user's files; the rerun removes its temporary file, and only it:
    not the user's files, not a temporary file of a process still running, not another file's."""
    script = (
        "import os, signal, sys\n"
        "from cxrseg.files import AtomicCsv\n"
        "csv = AtomicCsv(sys.argv[1], ['ImageId', 'EncodedPixels'])\n"
        "csv.writerow(['a', '-1']); csv.handle.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path / "submission.csv")]).returncode == -9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".submission.csv.tmp-")
    running = tmp_path / f".submission.csv.tmp-{os.getpid()}-0123abcd"
    users = [tmp_path / ".submission.csv.tmp-notes", tmp_path / f".other.csv.tmp-{99999999}-0123abcd"]
    for path in (running, *users):
        path.write_text("keep")
    with AtomicCsv(tmp_path / "submission.csv", ["ImageId", "EncodedPixels"]) as csv:
        csv.writerow(["b", "-1"])
    expected = ["submission.csv", running.name, *(p.name for p in users)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


def test_mark_output_removes_the_temporary_files_of_killed_writes_in_the_folder(tmp_path):
    out = mark_output(tmp_path / "out", PREDICTIONS)
    (out / "masks").mkdir()
    dead = [out / ".per_image.csv.tmp-99999999-0123abcd", out / "masks/.a.png.tmp-99999999-89abcdef"]
    kept = [out / "masks/a.png", out / f"masks/.b.png.tmp-{os.getpid()}-0123abcd"]
    for path in (*dead, *kept):
        path.write_text("x")
    mark_output(out, PREDICTIONS)
    assert not any(path.exists() for path in dead) and all(path.exists() for path in kept)


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
