#!/usr/bin/env python
"""Where the demo's minutes go, and its training steps per second against a plain PyTorch loop in the same run.

    python bench/demo_minutes.py                                 # recipe/demo.yaml as `make demo` runs it
    python bench/demo_minutes.py --num_train_epochs 2 --demo_num_images 48 --baseline-steps 2   # a quick look

Runs the demo recipe (arguments after the options are recipe overrides, as on run_train.py's command line) in this
process through :func:`cxrseg.training.train.train`, with a callback that times each phase of the Trainer's loop,
and prints one table (seconds and share of the run's wall time):

* start-up imports: ``import cxrseg.training.train`` in a fresh interpreter (a separate process, timed apart);
* demo data drawing: the synthetic dataset written to a temporary folder (the recipe's ``demo_num_images``);
* set-up: from the call to ``train`` to the Trainer's first step (checks, indexing, model, dry step, sampler);
* training steps: forward, loss, backward and optimizer (``on_step_begin`` → ``on_step_end``);
* batch loading: between a step's end (or the evaluation and save after it) and the next step's begin;
* evaluation: ``on_step_end`` → ``on_evaluate`` at each evaluation;
* checkpoint saves: ``on_evaluate`` (or ``on_step_end``) → ``on_save``;
* end: from the last step to ``train``'s return (best model reload, final evaluation, model card, plots).

Then the baseline: the same model architecture trained by a plain PyTorch loop (fp32, default memory format,
AdamW, Dice + CE on both heads, random batches of the recipe's size), ``--baseline-steps`` steps; the ratio of the
recipe's steps per second to it shows a regression of cxrseg's training path as a ratio, whatever the machine.
Commit, versions, CPU and the recipe's precision and memory format are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]


def import_seconds() -> float:
    """Wall time of ``import cxrseg.training.train`` in a fresh interpreter (what every command pays first)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cxrseg.training.train"], check=True, env={**os.environ})
    return time.perf_counter() - start


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo where there is one) and whether it has bf16 instructions."""
    from cxrseg.config import cpu_has_native_bf16

    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        name = names[0] if names else name
    return f"{name} ({os.cpu_count()} cores, bf16 instructions: {'yes' if cpu_has_native_bf16() else 'no'})"


def commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    return (result.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipe" / "demo.yaml"))
    parser.add_argument("--baseline-steps", type=int, default=40, help="plain-loop steps timed (after 3 warm-up)")
    parser.add_argument("--json", help="Also write the results here.")
    args, overrides = parser.parse_known_args()

    imports = import_seconds()
    import torch  # noqa: E402 - after the fresh-interpreter timing
    from train_step import TrainingStep, versions
    from transformers import TrainerCallback

    from cxrseg.config import parse_recipe
    from cxrseg.synthetic import DEMO_DATA_MAKERS
    from cxrseg.training.train import train

    class PhaseTimer(TrainerCallback):
        """Seconds spent in each phase of the Trainer's loop (the module docstring)."""

        def __init__(self) -> None:
            self.seconds = dict.fromkeys(("steps", "loading", "evaluation", "saves"), 0.0)
            self.mark = None  # (phase that ends at the next event, time)
            self.first_step = self.last_event = None
            self.num_steps = 0
            self.ended = False

        def _close(self, phase: str) -> None:
            if self.ended:
                return
            now = time.perf_counter()
            if self.mark is not None:
                self.seconds[phase] += now - self.mark
            self.mark = now
            self.last_event = now

        def on_train_end(self, *_, **__):
            self.ended = True  # what follows (best model, final evaluation, card) is the end phase

        def on_step_begin(self, *_, **__):
            if self.first_step is None:
                self.first_step = time.perf_counter()
                self.mark = self.first_step
            else:
                self._close("loading")

        def on_step_end(self, *_, **__):
            self._close("steps")
            self.num_steps += 1

        def on_evaluate(self, *_, **__):
            self._close("evaluation")

        def on_save(self, *_, **__):
            self._close("saves")

    with tempfile.TemporaryDirectory(prefix="demo-minutes-") as tmp:
        data_dir, out_dir = Path(tmp) / "data", Path(tmp) / "out"
        recipe = parse_recipe(
            ["--config", args.config, *overrides, "--data_dir", str(data_dir), "--output_dir", str(out_dir)]
        )
        start = time.perf_counter()
        DEMO_DATA_MAKERS["pneumothorax"](data_dir, num_images=recipe.data.demo_num_images, seed=0)
        drawing = time.perf_counter() - start
        timer = PhaseTimer()
        start = time.perf_counter()
        train(recipe, callbacks=[timer])
        end = time.perf_counter()
        training = recipe.training
        precision = "bf16" if training.bf16 else "fp16" if training.fp16 else "fp32"
        memory = "channels-last" if getattr(recipe.precision, "channels_last", False) else "contiguous"  # older trees
        batch, size = training.per_device_train_batch_size, recipe.data.image_size

    phases = {
        "start-up imports (fresh interpreter)": imports,
        "demo data drawing": drawing,
        "set-up (checks, index, model, sampler)": timer.first_step - start,
        "training steps": timer.seconds["steps"],
        "batch loading": timer.seconds["loading"],
        "evaluation": timer.seconds["evaluation"],
        "checkpoint saves": timer.seconds["saves"],
        "end (best model, final evaluation, card, plots)": end - timer.last_event,
    }
    total = sum(phases.values())
    recipe_rate = timer.num_steps / timer.seconds["steps"]

    # The baseline: the same architecture in a plain fp32 loop, same batch and size (bench/train_step.py's step).
    spec = dict(bf16=False, tf32=False, channels_last=False, fused=False, compile=False)
    step = TrainingStep(recipe.model.model_config, size, batch, spec, torch.device("cpu"))
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.baseline_steps):
        step()
    baseline_rate = args.baseline_steps / (time.perf_counter() - start)

    cpu, tree, stack = cpu_name(), commit(), versions()
    print(
        f"commit {tree}, torch {stack['torch']}, transformers {stack['transformers']}, {cpu}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"recipe {args.config} {' '.join(overrides)}: {precision}, {memory}, batch {batch}, {size}², "
        f"{timer.num_steps} steps"
    )
    print(f"{'phase':<50}{'seconds':>10}{'share':>8}")
    for name, seconds in phases.items():
        print(f"{name:<50}{seconds:>10.1f}{seconds / total:>8.1%}")
    print(f"{'total':<50}{total:>10.1f}")
    print(
        f"training steps/s: recipe {recipe_rate:.2f}, plain fp32 loop {baseline_rate:.2f} "
        f"→ {recipe_rate / baseline_rate:.2f}× the baseline"
    )
    if args.json:
        result = {
            "commit": tree,
            "versions": stack,
            "cpu": cpu,
            "threads": torch.get_num_threads(),
            "recipe": args.config,
            "overrides": overrides,
            "precision": precision,
            "memory_format": memory,
            "phases_s": phases,
            "steps": timer.num_steps,
            "recipe_steps_per_s": recipe_rate,
            "baseline_steps_per_s": baseline_rate,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
