"""The shared prepare run (`write_layout`), through `prepare siim`: --strict, OUT refusal and replacement, an
interrupted or killed run, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cxrseg.errors import OutputError, PrepareError
from cxrseg.prepare.siim import prepare_siim
from cxrseg.prepare.writer import PrepareOptions
from tests.prepare.conftest import read_png


def test_strict_fails_and_writes_nothing(siim_raw, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="--strict: 2 problems.*missing_dicom: 1, unlabelled: 1"):
        prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(out, strict=True))
    assert not out.exists()
    from cxrseg.cli import main  # in-process: the exit status and message (test_siim runs the CLI as a subprocess)

    assert main(["prepare", "siim", *siim_raw.cli_args(test=False), "--out", str(out), "--strict"]) == 2
    assert "error: --strict: 2 problems" in capsys.readouterr().err and not out.exists()


def test_replaces_only_its_own_dataset_and_only_with_overwrite(siim_raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # a folder cxrseg did not write is never replaced
        with pytest.raises(OutputError, match="cxrseg did not write"):
            prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(out, image_size=32, overwrite=overwrite))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(out, image_size=32))
    (out / "images" / "train" / "extra.png").write_bytes(b"")
    with pytest.raises(OutputError, match="pass --overwrite"):
        prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(out, image_size=32))
    assert (out / "images" / "train" / "extra.png").exists()
    prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(out, image_size=32, overwrite=True))
    written = [p.name for p in (out / "images" / "train").iterdir()]
    assert "extra.png" not in written and len(written) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_interrupted_run_leaves_no_half_dataset(siim_raw, tmp_path, monkeypatch):
    import cxrseg.prepare.siim as module

    calls = []

    def failing(item, root):
        calls.append(item.image_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(item, root)

    original = module.convert_siim_item
    monkeypatch.setattr(module, "convert_siim_item", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "out", image_size=32))
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.slow
def test_two_processes_write_the_same_files(siim_raw, tmp_path):
    one = prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "one", image_size=64))
    two = prepare_siim(siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "two", image_size=64, num_proc=2))
    counts = [(s.written, s.positive, s.negative, s.skipped) for s in (one, two)]
    assert counts[0] == counts[1]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 6
    for relative in files:
        np.testing.assert_array_equal(read_png(tmp_path / "one" / relative), read_png(tmp_path / "two" / relative))
    assert (tmp_path / "one" / "metadata.csv").read_text().replace("/one/", "/") == (
        tmp_path / "two" / "metadata.csv"
    ).read_text().replace("/two/", "/")


KILLED_PREPARE = """
import os, signal, sys
import cxrseg.prepare.siim as siim
from cxrseg.cli import main

convert = siim.convert_siim_item
calls = []

def convert_then_die(item, root):  # kill -9 on the second image: no cleanup runs
    calls.append(item)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return convert(item, root)

siim.convert_siim_item = convert_then_die
main(sys.argv[1:])
"""


def test_a_killed_prepare_leaves_a_folder_that_the_rerun_removes(siim_raw, tmp_path):
    """A prepare killed mid-run leaves its temporary folder beside OUT; the rerun removes it, and the layout gets
    mkdir's permissions under the user's umask (not mkdtemp's 0700)."""
    from cxrseg.cli import main

    out = tmp_path / "out"
    argv = ["prepare", "siim", *siim_raw.cli_args(test=False), "--out", str(out), "--image-size", "32"]
    assert subprocess.run([sys.executable, "-c", KILLED_PREPARE, *argv]).returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "raw")
    assert len(left) == 1 and left[0].startswith(".out.partial-")
    umask = os.umask(0o027)
    try:
        assert main(argv) == 1  # finished; the unlabelled DICOM is skipped
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]
    assert out.stat().st_mode & 0o777 == 0o750
