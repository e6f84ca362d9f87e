"""A kill leaves nothing running and nothing behind. Each multi-process command (``prepare --num-proc 2``,
``predict`` with data-loader workers, a cross-validation run) is started as a user starts it, in a session of its
own, and its main process gets ``kill -9`` at a random moment of its work (``CXRSEG_FAULT_SEED`` picks other
moments): then no process of the session may survive (worker pools die with their parent), and the rerun of the same
command must finish and leave no temporary file or folder anywhere (``.NAME.tmp-*`` beside the user's files
included)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import save_tiny_model
from tests.training.test_resume import ROOT, train_arguments

FAULT_SEED = int(os.environ.get("CXRSEG_FAULT_SEED", "0"))
LEFTOVER = re.compile(r"^\..+\.(tmp|partial|previous)-\d+-[0-9a-f]{8}$|^_checkpoint-in-progress")


def session_processes(session: int) -> list[str]:
    """The live processes (not zombies) of ``session``, as ``pid name``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name} {name}")
    return found


def kill_at_random(cmd: list[str], started, window: float, seed: int, log: Path) -> None:
    """Start ``cmd`` in a new session; once ``started(pid of the run)`` holds, wait a random part of ``window``
    seconds and ``kill -9`` its main process; then require every process of its session to be gone within 60 s."""
    with open(log, "w") as output:
        run = subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not started(run.pid):
            assert run.poll() is None, f"ended before its work started:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "never started its work"
            time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0, window))
        assert run.poll() is None, f"finished before the kill (raise the work):\n{log.read_text()[-2000:]}"
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 60
        while session_processes(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not session_processes(run.pid), f"still running after the kill: {session_processes(run.pid)}"
    finally:  # nothing outlives the test, whatever it found
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def leftovers(root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path in root.rglob("*") if LEFTOVER.match(path.name)]


@pytest.fixture
def workspace(tmp_path, demo_root) -> Path:
    """Raw images and masks (the demo images, 10 copies each, so the work lasts), a model, a user's file."""
    for kind in ("images", "masks"):
        (tmp_path / "raw" / kind).mkdir(parents=True)
        for source in sorted((demo_root / kind / "train").iterdir()):
            for copy in range(10):
                shutil.copyfile(source, tmp_path / "raw" / kind / f"{source.stem}_{copy}.png")
    save_tiny_model(tmp_path / "model")
    (tmp_path / "notes.csv").write_text("mine\n")
    return tmp_path


def cxrseg(*argv: str) -> list[str]:
    return [sys.executable, "-m", "cxrseg", *argv]


# command: (argv from the workspace, the rerun's extra arguments, started(workspace, pid of the run), kill window in s)
COMMANDS = {
    "prepare": (
        lambda ws, demo: cxrseg("prepare", "folder", "--images", str(ws / "raw/images"), "--masks",
                                str(ws / "raw/masks"), "--out", str(ws / "prepared"), "--num-proc", "2", "--overwrite",
                                "--image-size", "1024"),  # upsampled: seconds of work, so the kill lands mid-way
        [],
        lambda ws, pid: len(session_processes(pid)) >= 4,  # the pool is up: main, forkserver and two workers
        0.5,
    ),
    "predict": (
        lambda ws, demo: cxrseg("predict", "--model", str(ws / "model"), "--input", str(ws / "raw/images"), "--out",
                                str(ws / "predictions"), "--submission", str(ws / "submission.csv"),
                                "--num-workers", "2", "--batch-size", "2"),
        [],
        lambda ws, pid: (ws / "predictions/masks").is_dir(),
        1.0,
    ),
    "cross-validation": (
        lambda ws, demo: [sys.executable, "run_train.py",
                          *train_arguments(demo, ws / "cv", num_folds=3, num_train_epochs=2, report_to="none")],
        ["--resume_from_checkpoint", "last"],
        lambda ws, pid: (ws / "cv/fold_0").is_dir(),
        3.0,  # the work after fold_0 appears: 5.6 s on an idle 2-core machine (2 folds of 1 epoch: 4.2 s, too short)
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_killed_command_leaves_nothing_running_and_its_rerun_nothing_behind(workspace, demo_root, command):
    argv, rerun_extra, started, window = COMMANDS[command]
    cmd = argv(workspace, demo_root)
    user_file = (workspace / "notes.csv").read_bytes()
    seed = FAULT_SEED * len(COMMANDS) + list(COMMANDS).index(command)
    kill_at_random(cmd, lambda pid: started(workspace, pid), window, seed, workspace / "killed.log")
    result = subprocess.run([*cmd, *rerun_extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert leftovers(workspace) == []
    assert (workspace / "notes.csv").read_bytes() == user_file
