"""Distributed training for real: two processes (DDP over gloo on CPU) launched once by the documented accelerate
command, checked property by property against the balanced sampler and a single-process evaluation; plus the
accelerate configs and SLURM script."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from transformers import TrainerCallback, TrainingArguments, UperNetForSemanticSegmentation

from cxrseg.config import Recipe, parse_recipe
from cxrseg.data.dataset import TrainingData, build_sampler, data_labels, load_training_data
from cxrseg.data.sampling import BalancedSampler
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.model import build_image_processor
from cxrseg.training.checkpoints import STAGING_DIR
from cxrseg.training.losses import DiceCELoss
from cxrseg.training.trainer import SegmentationTrainer, streaming_metrics
from tests.conftest import TINY_MODEL_CONFIG
from tests.training.test_resume import FAULT_SEED, assert_checkpoints_complete, assert_same_run, hooks_site, run_killed

ROOT = Path(__file__).resolve().parents[2]
BATCH = 2  # per process
ACCUMULATION = 2  # gradient accumulation exercises DDP's no_sync steps too
EPOCHS = 2  # the second one shows each epoch's own draws, and resuming inside it


class RecordRows(TrainerCallback):
    """Appends to ``folder/rank{process_index}.txt`` the ``image_id`` of every training row this process's data
    loader really read, in order, by giving the rows of the loader's dataset (an AugmentedDataset) a pass-through
    transform that records them, when training begins (the Trainer passes ``train_dataloader`` to its callbacks)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        path = self.folder / f"rank{args.process_index}.txt"

        def recording(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            with open(path, "a") as file:
                file.writelines(f"{image_id}\n" for image_id in batch["image_id"])
            return batch

        train_dataloader.dataset.rows.set_transform(recording)


def native_threads() -> list[str]:
    """The names of this process's threads (Python's and those started by C++, e.g. torch's gloo workers)."""
    return sorted(Path(task, "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())


class RecordThreads(TrainerCallback):
    """Writes ``folder/rank{process_index}-training.txt``, this process's :func:`native_threads` when training
    begins (the process group is up)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def on_train_begin(self, args, state, control, **kwargs):
        (self.folder / f"rank{args.process_index}-training.txt").write_text("\n".join(native_threads()))


# What run_train.py does, plus the callbacks above: the recipe comes from the command line. Once train() has returned
# (the end of the run, as for run_train.py), each process writes its threads again.
LAUNCHER = """\
import os
import sys
from pathlib import Path

from cxrseg.config import parse_recipe
from cxrseg.training.train import train
from tests.training.test_ddp import RecordRows, RecordThreads, native_threads

train(parse_recipe(sys.argv[1:]), callbacks=[RecordRows({rows!r}), RecordThreads({threads!r})])
Path({threads!r}, f"rank{{os.environ['RANK']}}-returned.txt").write_text("\\n".join(native_threads()))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_shards(indices: list[int], batch: int, world: int) -> list[list[int]]:
    """Accelerate's sharding of a sampler (``even_batches=True``): the sequence is cut into batches, batch ``k`` goes
    to process ``k % world``, and the sequence is completed with its own first items so every process gets the
    same number of full batches."""
    step = batch * world
    total = -(-len(indices) // step) * step
    padded = (indices * (total // len(indices) + 1))[:total]
    batches = [padded[i : i + batch] for i in range(0, total, batch)]
    return [[i for b in batches[rank::world] for i in b] for rank in range(world)]


@dataclass
class DistributedRun:
    """One finished 2-process run: its output folder, and per rank the rows it trained on and its writes."""

    out: Path
    rows: list[list[str]]
    writes: list[list[str]]
    threads: list[dict[str, list[str]]]  # per rank, its thread names when training began and once train() returned
    recipe: Recipe  # reloaded from the run's recipe.yaml
    data: TrainingData  # reloaded from the run's recipe and splits.json


def run_arguments(demo_root: Path, out: Path) -> list[str]:
    """What follows the script in the 2-process runs here: the demo recipe with a tiny model, ``EPOCHS`` epochs of two
    optimizer steps, an evaluation and a checkpoint every step (the best one loaded at the end)."""
    return [
        "--config", "recipe/demo.yaml",
        "--data_dir", str(demo_root), "--image_size", "64", "--model_config", json.dumps(TINY_MODEL_CONFIG),
        "--num_train_epochs", str(EPOCHS), "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size",
        "2", "--gradient_accumulation_steps", str(ACCUMULATION), "--save_strategy", "steps", "--save_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", "1", "--output_dir", str(out), "--logging_steps", "1",
        "--report_to", "none", "--mixed_precision", "no",  # fp32: the 1-process evaluation must equal it exactly
    ]  # fmt: skip


def launch_command(script: str | os.PathLike, arguments: list[str]) -> list[str]:
    """The documented 2-process command (accelerate_configs/cpu_ddp.yaml) on a free port."""
    accelerate = Path(sys.executable).parent / "accelerate"
    config = ["--config_file", "accelerate_configs/cpu_ddp.yaml", "--main_process_port", str(free_port())]
    return [str(accelerate), "launch", *config, str(script), *arguments]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, demo_root) -> DistributedRun:
    """Train the demo recipe (tiny model, two epochs) with two processes, once for every test in this module."""
    tmp = tmp_path_factory.mktemp("ddp")
    out, rows, audit, threads = (tmp / name for name in ("out", "rows", "audit", "threads"))
    for folder in (rows, audit, threads):
        folder.mkdir()
    launcher = tmp / "launch_train.py"
    launcher.write_text(LAUNCHER.format(rows=str(rows), threads=str(threads)))
    # hooks_site puts the repository on PYTHONPATH too: the launcher imports this module
    env = {**hooks_site(tmp / "site"), "AUDIT_ROOT": str(out), "AUDIT_DIR": str(audit)}
    cmd = launch_command(launcher, run_arguments(demo_root, out))
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in rows.iterdir()) == ["rank0.txt", "rank1.txt"]
    writes = [(audit / f"rank{rank}.txt").read_text().splitlines() for rank in range(2)]
    recipe = parse_recipe(["--config", str(out / "recipe.yaml")])
    processor = build_image_processor(recipe.data.image_size)
    data = load_training_data(
        recipe.data, data_labels(recipe.data.data_dir), out / "splits.json", mean=processor.image_mean,
        std=processor.image_std,
    )  # fmt: skip
    return DistributedRun(
        out=out,
        rows=[(rows / f"rank{rank}.txt").read_text().split() for rank in range(2)],
        writes=[[line.split(" ", 1)[1] for line in lines if line] for lines in writes],
        threads=[
            {when: (threads / f"rank{rank}-{when}.txt").read_text().splitlines() for when in ("training", "returned")}
            for rank in range(2)
        ],
        recipe=recipe,
        data=data,
    )


def balanced_draws(run: DistributedRun, epoch: int) -> list[str]:
    """The image ids the recipe's sampler draws in ``epoch``, rebuilt in this process."""
    labels = data_labels(run.recipe.data.data_dir)
    sampler, _ = build_sampler(run.recipe.sampling, labels, run.data, run.recipe.training.seed)
    assert isinstance(sampler, BalancedSampler)
    return [run.data.split["train"][i] for i in sampler.indices(epoch)]  # dataset rows are the split's train ids


@pytest.mark.slow
def test_each_process_reads_its_own_shard_of_the_balanced_draws(ddp_run):
    shards = [expected_shards(balanced_draws(ddp_run, epoch), BATCH, 2) for epoch in range(EPOCHS)]
    assert ddp_run.rows == [first + second for first, second in zip(*shards)]
    assert ddp_run.rows[0] != ddp_run.rows[1]


@pytest.mark.slow
def test_each_process_has_left_the_process_group_when_train_returns(ddp_run):
    """The gloo process group is freed, its C++ threads joined, before the program ends: left to interpreter exit, a
    worker thread that still drops the last collective's tensors takes the GIL during finalization, and the process
    aborts after a finished run ("terminate called without an active exception")."""
    for threads in ddp_run.threads:
        gloo = {name for name in threads["training"] if "gloo" in name}
        assert gloo  # torch names them pt_gloo_runloop and gloo_tcp_loop
        assert not gloo & set(threads["returned"])


@pytest.mark.slow
def test_optimizer_steps_show_world_size_two_with_accumulation(ddp_run):
    """Optimizer steps from each process's batches: half a single process's, so the Trainer ran with world size 2."""
    state = json.loads((ddp_run.out / "trainer_state.json").read_text())
    batches = len(ddp_run.rows[0]) // BATCH // EPOCHS  # per epoch
    assert batches == -(-len(balanced_draws(ddp_run, 0)) // (2 * BATCH))
    assert state["global_step"] == EPOCHS * -(-batches // ACCUMULATION)


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(ddp_run, tmp_path):
    """The 2-process evaluation (sharded, gathered, padding dropped) equals a one-process evaluation of the saved
    model: the final one (the best checkpoint, reloaded by every process) and the last checkpoint, evaluated during
    training, when process 1 had updated its BatchNorm statistics from its own batch (only process 0's are saved)."""
    state = json.loads((ddp_run.out / "trainer_state.json").read_text())
    last = [row for row in state["log_history"] if row["step"] == state["global_step"] and "eval_loss" in row]
    distributed = {
        ddp_run.out: json.loads((ddp_run.out / "eval_results.json").read_text()),
        ddp_run.out / f"checkpoint-{state['global_step']}": last[0],
    }
    for folder, reported in distributed.items():
        model = UperNetForSemanticSegmentation.from_pretrained(folder)
        compute, preprocess = streaming_metrics(PNEUMOTHORAX)
        args = TrainingArguments(
            output_dir=str(tmp_path / "single"), per_device_eval_batch_size=3, use_cpu=True, report_to="none",
            batch_eval_metrics=True, remove_unused_columns=False, label_names=["labels"],
        )  # fmt: skip
        trainer = SegmentationTrainer(
            model=model, args=args, eval_dataset=ddp_run.data.val, compute_metrics=compute,
            preprocess_logits_for_metrics=preprocess, loss_fn=DiceCELoss(),
        )  # fmt: skip
        single = trainer.evaluate()
        assert reported["eval_num_images"] == len(ddp_run.data.val) == single["eval_num_images"]
        for key in ("dice", "iou", "kaggle_dice", "ap", "best_f1", "best_threshold", "num_positive_images"):
            expected = pytest.approx(single[f"eval_{key}"], rel=1e-6, abs=1e-9, nan_ok=True)
            assert reported[f"eval_{key}"] == expected, (folder.name, key)


@pytest.mark.slow
def test_only_the_main_process_writes_outputs_except_rng_state(ddp_run):
    """Each process's RNG state goes into a checkpoint (needed to resume exactly), while it is written in the staging
    folder; everything else is rank 0's, who also renames the finished checkpoint into place."""
    main, other = ddp_run.writes
    assert {"recipe.yaml", "trainer_state.json", "all_results.json", "README.md"} <= {Path(w).name for w in main}
    checkpoint = f"checkpoint-{json.loads((ddp_run.out / 'trainer_state.json').read_text())['global_step']}"
    assert f"{STAGING_DIR}/{checkpoint}/trainer_state.json" in main and checkpoint in main  # written, then renamed
    assert other, "the audit hook saw no write by rank 1: the RNG state check below would be empty"
    for path in other:
        parts = Path(path).parts
        assert parts[0] == STAGING_DIR and (len(parts) == 1 or parts[1].startswith("checkpoint-")), path
        assert len(parts) <= 2 or parts[2] == "rng_state_1.pth", path


def test_accelerate_configs_load():
    """Every config parses with accelerate's own loader; the launch settings the README relies on hold."""
    configs = {p.stem: load_config_from_file(str(p)) for p in (ROOT / "accelerate_configs").glob("*.yaml")}
    assert {"single_gpu", "multi_gpu", "multi_node", "cpu_ddp"} <= configs.keys()
    assert configs["single_gpu"].num_processes == 1
    assert configs["cpu_ddp"].distributed_type == "MULTI_GPU" and configs["cpu_ddp"].num_processes == 2
    assert configs["multi_gpu"].num_processes == -1  # accelerate then requires --num_processes
    assert configs["multi_node"].num_machines == 2
    for name, config in configs.items():
        # a precision here would override a recipe that says mixed_precision: "no"
        assert config.mixed_precision == "no", name


def test_slurm_script_launches_each_node_with_its_rank(tmp_path):
    """The SLURM script with stand-ins for srun/scontrol/accelerate: one launch per node, rank from SLURM_NODEID."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "srun": 'shift; for i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$i "$@"; done',
        "scontrol": 'printf "node-a\\nnode-b\\n"',
        "accelerate": f'echo "$@" >> {tmp_path}/launches.txt',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "GPUS_PER_NODE": "4"}  # fmt: skip
    result = subprocess.run(
        ["bash", "scripts/slurm_train.sh", "recipe/balanced.yaml", "--learning_rate", "5.0e-5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    launches = (tmp_path / "launches.txt").read_text().splitlines()
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        assert line.startswith("launch --config_file accelerate_configs/multi_node.yaml --num_machines 2 ")
        assert f"--num_processes 8 --machine_rank {rank} --main_process_ip node-a --main_process_port 29500" in line
        assert line.endswith("run_train.py --config recipe/balanced.yaml --learning_rate 5.0e-5")


@pytest.mark.slow
def test_a_two_process_run_killed_while_saving_resumes_to_the_uninterrupted_weights(ddp_run, demo_root, tmp_path):
    """``kill -9`` of the whole 2-process run (launcher and both ranks) at a seeded random write of a rank during the
    save at step 4, then the same command plus ``--resume_from_checkpoint last``: the run ends as the uninterrupted
    one (``ddp_run``) did. Losing that save resumes inside the second epoch, past two skipped batches."""
    plan = random.Random(FAULT_SEED)
    rank = plan.choice(["0", "1"])
    # rank 0's 10th Python-level write of a save is the rename; rank 1's only one creates the staging folder (its RNG
    # state is written by torch's C++ writer, which the hook does not see), at some point of rank 0's writes
    after = plan.randint(1, 10) if rank == "0" else 1
    out = tmp_path / "out"
    env = hooks_site(tmp_path / "site")
    cmd = launch_command("run_train.py", run_arguments(demo_root, out))
    run_killed(cmd, env, out, tmp_path, rank=rank, step=4, after=after)
    assert assert_checkpoints_complete(out)[-1] == "checkpoint-3", (rank, after)
    resume = launch_command("run_train.py", [*run_arguments(demo_root, out), "--resume_from_checkpoint", "last"])
    result = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_run(out, ddp_run.out)
