#!/usr/bin/env python
"""Train a chest X-ray segmentation model from a recipe.

    python run_train.py --config recipe/demo.yaml
    accelerate launch run_train.py --config recipe/balanced.yaml [--learning_rate 5e-5 ...]
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml run_train.py --config recipe/balanced.yaml

Keys: the fields of cxrseg.config's dataclasses and transformers.TrainingArguments; the command line overrides
the YAML, which overrides the defaults. `cxrseg train ...` (and `accelerate launch -m cxrseg train ...`) is the same
command: the same parser and main.
"""

import sys

from cxrseg.training.train import main

if __name__ == "__main__":
    sys.exit(main())
