#!/bin/bash
# Multi-node training under SLURM: one `accelerate launch` per machine, each with its own machine rank.
#
#   sbatch --nodes=2 scripts/slurm_train.sh recipe/balanced.yaml [--learning_rate 5.0e-5 ...]
#
# Everything about the run is in the recipe (and the overrides after it); this script only says where the
# processes go. Edit the #SBATCH lines for your cluster. Assumes the environment (e.g. `source .venv/bin/activate`)
# and the data folder are visible on every node at the same paths; only the main process writes output_dir.
#SBATCH --job-name=cxrseg
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts one process per GPU
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --output=%x-%j.out
set -euo pipefail

RECIPE=${1:?usage: sbatch scripts/slurm_train.sh RECIPE.yaml [--key value ...]}
shift

GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi --list-gpus | wc -l)}
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')  # awk reads all: no SIGPIPE under pipefail
MAIN_PORT=${MAIN_PORT:-29500}

# Single quotes: $SLURM_NODEID must be expanded on each node, not here.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch \
    --config_file accelerate_configs/multi_node.yaml \
    --num_machines "$SLURM_NNODES" \
    --num_processes $(( SLURM_NNODES * '"$GPUS_PER_NODE"' )) \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip '"$MAIN_HOST"' \
    --main_process_port '"$MAIN_PORT"' \
    run_train.py --config "$0" "$@"' "$RECIPE" "$@"
