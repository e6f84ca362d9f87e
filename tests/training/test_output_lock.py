"""One run per output folder: a run holds its folder's lock (``.cxrseg.lock``, an ``fcntl.flock``) from its first
write to its end; a second run on the folder is refused with one line naming the folder and the running process and
writes nothing; the first one finishes and the folder is one run's. Through real subprocesses: ``run_train.py`` (one
process) and ``accelerate launch`` with two gloo processes on CPU. The first run is held, by the pause hook of
tests/process_hooks.py, just after it took the lock (its first write, the ``.cxrseg`` marker), while the second
starts: the two overlap at a known point, not by luck of timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrseg.config import parse_recipe
from cxrseg.errors import OutputLockedError
from cxrseg.files import LOCK_FILE, check_not_locked, lock_output
from tests.cli.test_user_errors import snapshot
from tests.training.test_ddp import launch_command
from tests.training.test_resume import ROOT, assert_checkpoints_complete, hooks_site, train_arguments


def test_a_lock_refuses_a_second_holder_names_the_process_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "run"
    with lock_output(out):
        with pytest.raises(OutputLockedError, match=rf"^{out} is in use by another cxrseg run \(process \d+\)"):
            check_not_locked(out)
        # another process: flock locks belong to an open file description, so a child sees the lock too
        code = f"from cxrseg.files import lock_output; lock_output({str(out)!r})"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert "OutputLockedError" in result.stderr and "is in use by another cxrseg run" in result.stderr
    check_not_locked(out)  # released
    holder = subprocess.Popen([sys.executable, "-c", f"{code}; import time; time.sleep(600)"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                check_not_locked(out)
            except OutputLockedError as error:
                assert f"(process {holder.pid})" in str(error)
                break
            time.sleep(0.1)
        else:
            pytest.fail("the child never took the lock")
    finally:
        holder.kill()  # kill -9: the OS releases the lock, so the next run is not blocked
        holder.wait()
    with lock_output(out):
        pass


def held_run(cmd: list[str], out: Path, work: Path, rank: str) -> tuple[subprocess.Popen, int]:
    """Start ``cmd`` held by the pause hook just before it writes the ``.cxrseg`` marker of ``out`` (it holds the
    lock then); returns the process and the pid of the held process (rank ``rank``'s, or the only one)."""
    pause = work / "pause"
    pause.mkdir(parents=True)
    env = {
        **hooks_site(work / "site"),
        "PAUSE_ROOT": str(out), "PAUSE_NAME": ".cxrseg", "PAUSE_DIR": str(pause), "PAUSE_RANK": rank,
    }  # fmt: skip
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (pause / "paused").exists():
        assert run.poll() is None, run.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the first run never reached its first write"
        time.sleep(0.1)
    return run, int((pause / "paused").read_text())


def release(run: subprocess.Popen, work: Path) -> str:
    (work / "pause/go").touch()
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    return output


def assert_one_finished_run(out: Path, arguments: list[str]) -> None:
    """``out`` holds one finished run of ``arguments``: its resolved recipe, complete checkpoints, final weights and
    state, no staging folder left, and the lock file of the run that held it."""
    saved = parse_recipe(["--config", str(out / "recipe.yaml")]).resolved
    assert saved == parse_recipe(arguments).resolved
    assert assert_checkpoints_complete(out)
    assert (out / "model.safetensors").is_file() and json.loads((out / "trainer_state.json").read_text())["global_step"]
    assert not list(out.glob("_checkpoint-in-progress*")) and (out / LOCK_FILE).is_file()


@pytest.mark.slow
def test_two_runs_on_one_folder_one_refuses_the_other_finishes(demo_root, tmp_path):
    out = tmp_path / "run"
    arguments = train_arguments(demo_root, out, num_train_epochs=1, report_to="none")
    cmd = [sys.executable, "run_train.py", *arguments]
    first, pid = held_run(cmd, out, tmp_path / "first", rank="")
    before = snapshot(out)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"error: {out} is in use by another cxrseg run (process {pid}); wait for it to finish, stop it, or choose "
        "another output folder."
    ]
    assert snapshot(out) == before  # the refused run wrote nothing
    release(first, tmp_path / "first")
    assert_one_finished_run(out, arguments)


@pytest.mark.slow
def test_two_accelerate_launches_on_one_folder_one_refuses_the_other_finishes(demo_root, tmp_path):
    """The double ``accelerate launch``: every rank of the second launch refuses (no rank waits for a peer that has
    left), the first launch's two gloo processes finish."""
    out = tmp_path / "run"
    arguments = train_arguments(demo_root, out, num_train_epochs=1, report_to="none", per_device_train_batch_size=4)
    first, pid = held_run(launch_command("run_train.py", arguments), out, tmp_path / "first", rank="0")
    before = snapshot(out)
    second = subprocess.run(launch_command("run_train.py", arguments), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode != 0
    refusal = f"error: {out} is in use by another cxrseg run (process {pid})"
    assert second.stderr.count(refusal) == 2, second.stderr[-3000:]  # one line from each rank
    assert snapshot(out) == before
    release(first, tmp_path / "first")
    assert_one_finished_run(out, arguments)


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    """A DataLoader worker is a forked child of the run: after ``kill -9`` of the run it lives on for seconds (until
    it notices), and it must not hold the folder's lock meanwhile, or a rerun at once would be refused."""
    out = tmp_path / "run"
    code = (
        "import os, signal, sys, time\n"
        "from cxrseg.files import lock_output\n"
        f"lock = lock_output({str(out)!r})\n"
        "child = os.fork()\n"
        "if child == 0:  # off the captured pipes, which would keep subprocess.run waiting for it\n"
        "    null = os.open(os.devnull, os.O_WRONLY)\n"
        "    os.dup2(null, 1)\n"
        "    os.dup2(null, 2)\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    child = int(killed.stdout)
    try:
        assert killed.returncode == -9
        os.kill(child, 0)  # the orphan still runs
        check_not_locked(out)
        with lock_output(out):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
