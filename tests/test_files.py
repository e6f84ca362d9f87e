"""Atomic files and folders: a failed or interrupted write leaves nothing behind and the user's files as they were."""

from __future__ import annotations

import os

import pytest

from cxrseg.files import atomic_folder


def test_atomic_folder_appears_complete_with_mkdir_permissions(tmp_path):
    out = tmp_path / "nested" / "out"
    with atomic_folder(out) as building:
        assert building.parent == out.parent and not out.exists()
        (building / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_leaves_nothing_behind_on_error(tmp_path, error):
    with pytest.raises(error):
        with atomic_folder(tmp_path / "out") as building:
            (building / "half.txt").write_text("half")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_an_existing_folder_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as building:
            (building / "new.txt").write_text("new")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_folder(out) as building:
        (building / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
