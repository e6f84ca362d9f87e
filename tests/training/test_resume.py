"""Every interrupted run resumes with the same command plus ``--resume_from_checkpoint last``.

One test per finding through the real entry point (``cxrseg.training.train.main``): an incomplete checkpoint is
skipped with
a warning naming it, a corrupt one is an error naming the file (exit 2, no traceback, the output folder untouched),
``last`` without a checkpoint warns and starts from scratch. The fault test kills a 1-process run (``kill -9`` of the
whole run) at a seeded random point of a checkpoint save, resumes it and compares the final weights with the
uninterrupted run's; tests/training/test_ddp.py does the same with two processes. ``CXRSEG_FAULT_SEED`` picks other
points.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrseg.training.checkpoints import check_readable, missing_files
from cxrseg.training.train import main
from tests.conftest import TINY_MODEL_CONFIG

ROOT = Path(__file__).resolve().parents[2]
FAULT_SEED = int(os.environ.get("CXRSEG_FAULT_SEED", "0"))


def train_arguments(data_dir: Path, out: Path, **overrides: object) -> list[str]:
    """``run_train.py``'s arguments: the demo recipe with the tiny model on ``data_dir``, written to ``out``."""
    options = {
        "data_dir": data_dir, "image_size": 64, "model_config": json.dumps(TINY_MODEL_CONFIG),
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4, "logging_steps": 1, "output_dir": out,
        **overrides,
    }  # fmt: skip
    return ["--config", str(ROOT / "recipe/demo.yaml")] + [f for k, v in options.items() for f in (f"--{k}", str(v))]


def hooks_site(folder: Path) -> dict[str, str]:
    """The environment that loads tests/process_hooks.py into every Python process of a launched run (through a
    ``sitecustomize.py`` in ``folder``), one thread per process."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("import tests.process_hooks  # noqa: F401\n")
    python_path = os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}


def run_killed(cmd: list[str], env: dict[str, str], out: Path, work: Path, *, rank: str, step: int, after: int) -> str:
    """Run ``cmd`` with the kill hook armed (see tests/process_hooks.py: in process ``rank`` at the ``after``-th write
    from the first one of ``checkpoint-{step}`` on) and return its output; fail unless it was killed there."""
    pids = work / "pids"
    pids.mkdir(parents=True)
    kill = {"KILL_ROOT": str(out), "KILL_PIDS": str(pids), "KILL_RANK": rank, "KILL_STEP": str(step)}
    log = work / "killed.log"
    with open(log, "w") as file:
        run = subprocess.Popen(
            cmd, cwd=ROOT, env={**env, **kill, "KILL_AFTER": str(after)}, stdout=file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            run.wait(timeout=600)
        finally:  # nothing of the run outlives the test, killed or not
            for pid in [run.pid, *map(int, os.listdir(pids))]:
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    output = log.read_text()
    assert run.returncode == -signal.SIGKILL, f"not killed at checkpoint-{step} write {after}:\n{output[-3000:]}"
    return output


def assert_checkpoints_complete(out: Path) -> list[str]:
    """Every ``checkpoint-N`` in ``out`` is complete and readable (what a kill must never break); their names."""
    names = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))
    for name in names:
        assert not missing_files(out / name), name
        check_readable(out / name)
    return names


def assert_same_weights(weights: Path, reference: Path) -> None:
    actual, expected = load_file(weights), load_file(reference)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=f"{weights}: {key}")


def evaluations(out: Path) -> dict[tuple[int, str], float]:
    """The evaluation metrics in ``out/trainer_state.json`` by (step, key), without the timings."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    rows = [row for row in history if "eval_loss" in row]
    return {(row["step"], k): v for row in rows for k, v in row.items() if k.startswith("eval_") and k not in timing}


def assert_same_run(out: Path, reference: Path) -> None:
    """``out`` ended as ``reference``: the same evaluations at every step (so the same best checkpoint), the same
    weights in the last checkpoint (the last step's) and in the output folder (the best checkpoint's, loaded)."""
    assert evaluations(out) == pytest.approx(evaluations(reference), rel=1e-6, abs=1e-9)
    state, expected = (json.loads((folder / "trainer_state.json").read_text()) for folder in (out, reference))
    assert Path(state["best_model_checkpoint"]).name == Path(expected["best_model_checkpoint"]).name
    last = assert_checkpoints_complete(reference)[-1]
    assert_same_weights(out / last / "model.safetensors", reference / last / "model.safetensors")
    assert_same_weights(out / "model.safetensors", reference / "model.safetensors")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs on one thread, as the launched ones (OMP_NUM_THREADS=1), so their sums are bitwise alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Three optimizer steps, a checkpoint after each (the last two kept); the fast tests damage copies of it. The final
# weights are the last step's (not the best checkpoint's), so they show whether the steps after a resume were exact.
SHORT = {"max_steps": 3, "save_strategy": "steps", "save_steps": 1, "eval_strategy": "no"}
SHORT["load_best_model_at_end"] = False


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_root) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(train_arguments(demo_root, out, **SHORT)) == 0
    assert assert_checkpoints_complete(out) == ["checkpoint-2", "checkpoint-3"]
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_resume_last_skips_an_incomplete_checkpoint_naming_it(finished_run, demo_root, tmp_path, caplog, capsys):
    """A kill during an in-place save (older versions, other tools) left checkpoint-3 with only config.json."""
    out = shutil.copytree(finished_run, tmp_path / "out")
    for path in (out / "checkpoint-3").iterdir():
        if path.name != "config.json":
            path.unlink()
    with caplog.at_level(logging.WARNING):
        code = main(train_arguments(demo_root, out, **SHORT, resume_from_checkpoint="last"))
    assert code == 0
    skipped = [r for r in caplog.records if r.levelno == logging.WARNING and "incomplete checkpoint" in r.message]
    assert len(skipped) == 1 and str(out / "checkpoint-3") in skipped[0].message
    assert "trainer_state.json" in skipped[0].message and "model.safetensors" in skipped[0].message
    assert "Traceback" not in capsys.readouterr().err
    # resumed from checkpoint-2: step 3 is trained again, saved complete over the broken folder, same weights
    assert assert_checkpoints_complete(out) == ["checkpoint-2", "checkpoint-3"]
    assert_same_weights(out / "model.safetensors", finished_run / "model.safetensors")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, resume, named",
    [
        (lambda out: truncate(out / "checkpoint-3/model.safetensors"), "last", "checkpoint-3/model.safetensors"),
        (lambda out: truncate(out / "checkpoint-3/optimizer.pt"), "last", "checkpoint-3/optimizer.pt"),
        (lambda out: truncate(out / "checkpoint-3/trainer_state.json"), "last", "checkpoint-3/trainer_state.json"),
        (lambda out: (out / "checkpoint-2/trainer_state.json").unlink(), "checkpoint-2", "checkpoint-2 is incomplete"),
        (lambda out: shutil.rmtree(out / "checkpoint-2"), "checkpoint-2", "checkpoint-2 does not exist"),
    ],
    ids=["truncated-weights", "truncated-optimizer", "corrupt-state", "named-incomplete", "named-missing"],
)
def test_a_checkpoint_that_cannot_be_resumed_is_an_error_naming_it(
    finished_run, demo_root, tmp_path, capsys, damage, resume, named
):
    out = shutil.copytree(finished_run, tmp_path / "out")
    damage(out)
    before = snapshot(out)
    resume = str(out / resume) if resume != "last" else resume
    assert main(train_arguments(demo_root, out, **SHORT, resume_from_checkpoint=resume)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{out}/{named}" in err and "Traceback" not in err, err
    assert snapshot(out) == before  # nothing written


def test_resume_last_without_a_checkpoint_warns_and_starts_from_scratch(demo_root, tmp_path, caplog, capsys):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = main(train_arguments(demo_root, out, **{**SHORT, "max_steps": 1}, resume_from_checkpoint="last"))
    assert code == 0 and "Traceback" not in capsys.readouterr().err
    warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"No complete checkpoint in {out} to resume from: training starts from scratch." in warnings
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


@pytest.mark.slow
def test_a_run_killed_while_saving_resumes_to_the_uninterrupted_weights(demo_root, tmp_path):
    """One process, random augmentation (the demo recipe's), a data-loader worker; 2 epochs of 6 steps, an evaluation
    and a checkpoint every 2 (the best loaded at the end). The kill falls at a seeded random write of the save at step
    8 or 10 (in the second epoch) or just after; the resumed run must end as the uninterrupted one did."""
    plan = random.Random(FAULT_SEED)
    step, after = plan.choice([8, 10]), plan.randint(1, 12)
    settings = {"num_train_epochs": 2, "save_strategy": "steps", "save_steps": 2, "eval_strategy": "steps"}
    settings.update(eval_steps=2, dataloader_num_workers=1)
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main(train_arguments(demo_root, reference, **settings)) == 0
    cmd = [sys.executable, "run_train.py", *train_arguments(demo_root, out, **settings)]
    run_killed(cmd, hooks_site(tmp_path / "site"), out, tmp_path, rank="", step=step, after=after)
    assert int(assert_checkpoints_complete(out)[-1].split("-")[1]) >= step - 2, (step, after)
    assert main(train_arguments(demo_root, out, **settings, resume_from_checkpoint="last")) == 0
    assert_same_run(out, reference)
