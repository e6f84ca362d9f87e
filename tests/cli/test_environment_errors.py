"""The machine, not the input: a port in use and a full disk end in one line saying what to free or change, exit
status 1, no traceback; a full disk during a checkpoint save leaves the last complete checkpoint resumable."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cxrseg.cli import main as cli_main
from cxrseg.errors import environment_problem
from cxrseg.training.checkpoints import check_readable, last_complete_checkpoint
from tests.conftest import save_tiny_model
from tests.training.test_resume import ROOT, train_arguments


def test_app_on_a_port_in_use_says_so_in_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    model = save_tiny_model(tmp_path / "model")
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli_main(["app", "--model", str(model), "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.splitlines() == [
        f"error: Port {port} on 127.0.0.1 is in use (another app, or a cxrseg app still running): stop it or choose "
        "another --port."
    ]


@pytest.mark.parametrize(
    "error, message",
    [
        (OSError(28, "No space left on device", "/data/out/x.png"), r"^No space left on the disk \(/data/out/x\.png\)"),
        (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"), r"^No space left"),
        (OSError(13, "Permission denied", "/data/in"), r"^Permission denied \(/data/in\): give your user access"),
        (OSError(30, "Read-only file system", "/mnt/ro"), r"^Read-only file system \(/mnt/ro\)"),
        (OSError(2, "No such file or directory", "x"), None),  # not the machine's: a bug keeps its traceback
        (ValueError("shape"), None),
    ],
)
def test_environment_problems_are_recognised_through_the_chain(error, message):
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as outer:
        problem = environment_problem(outer)
    if message is None:
        assert problem is None
    else:
        assert problem.exit_code == 1
        assert re.search(message, str(problem)), str(problem)


def private_mounts_work() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


def folder_bytes(folder: Path) -> int:
    """Bytes ``folder`` takes on a tmpfs: each file rounded up to whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.skipif(not private_mounts_work(), reason="needs a private mount namespace (unshare -m) for a small disk")
def test_a_full_disk_during_a_checkpoint_save_ends_in_one_line_and_the_last_checkpoint_resumes(demo_root, tmp_path):
    """A finished one-epoch run is copied onto a small tmpfs (in a mount namespace of the test's own) with room for
    half a checkpoint more; training it on to three epochs fills the disk at the next save. Then the disk grows and
    the same command resumes from the last complete checkpoint to the end."""
    run = tmp_path / "run"
    base = train_arguments(demo_root, run, num_train_epochs=1, report_to="none", per_device_train_batch_size=4)
    subprocess.run([sys.executable, "run_train.py", *base], cwd=ROOT, check=True, capture_output=True, timeout=600)
    (checkpoint,) = run.glob("checkpoint-*")
    size = folder_bytes(run) + folder_bytes(checkpoint) // 2 + 64 * 4096
    disk, inspect = tmp_path / "disk", tmp_path / "after_full"
    disk.mkdir()
    more = [a if a != str(run) else str(disk / "run") for a in base]
    more = [*more, "--num_train_epochs", "3", "--resume_from_checkpoint", "last"]
    script = f"""
mount -t tmpfs -o size={size} tmpfs {disk}
cp -a {run} {disk}/run
{sys.executable} run_train.py {" ".join(f"'{a}'" for a in more)} > {tmp_path}/full.out 2> {tmp_path}/full.err
echo $? > {tmp_path}/full.rc
cp -a {disk}/run {inspect}
mount -o remount,size=256m {disk}
{sys.executable} run_train.py {" ".join(f"'{a}'" for a in more)} > {tmp_path}/resume.out 2> {tmp_path}/resume.err
echo $? > {tmp_path}/resume.rc
cp -a {disk}/run {tmp_path}/resumed
"""
    subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=os.environ, check=True, timeout=900)
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", err[-3000:]
    assert "Traceback" not in err
    (line,) = [line for line in err.split("\n") if line.startswith("error: ")]  # progress bars aside
    assert line.startswith("error: No space left on the disk: free space there"), err[-3000:]
    assert "--resume_from_checkpoint last" in line
    last = last_complete_checkpoint(inspect)  # the last good checkpoint, complete and readable
    assert last is not None and last.name == checkpoint.name
    check_readable(last)
    resumed_err = (tmp_path / "resume.err").read_text()
    assert (tmp_path / "resume.rc").read_text().strip() == "0", resumed_err[-3000:]
    state = (tmp_path / "resumed/trainer_state.json").read_text()
    steps_per_epoch = int(checkpoint.name.split("-")[1])
    assert f'"global_step": {3 * steps_per_epoch}' in state
