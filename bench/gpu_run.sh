#!/usr/bin/env bash
# The GPU measurements recorded in BENCHMARKS.md, as one script (run from the repo root on a CUDA machine).
# Usage: OUT=results_dir bash bench/gpu_run.sh
set -u
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# 512², batch 16: every variant, against the reference-style fp32 loop in the same process.
timeout 220 $PY bench/train_step.py --device cuda --model swin-base --image-size 512 --batch-size 16 --steps 6 \
  --warmup 2 --json "$OUT/train_512_b16.json"
# Larger batches with the recipe's settings.
timeout 70 $PY bench/train_step.py --device cuda --model swin-base --image-size 512 --batch-size 32 --steps 5 \
  --warmup 2 --variants fp32-reference,recipe,+channels-last --json "$OUT/train_512_b32.json"
# 1024²: memory of the balanced_1024 recipe (batch 2 per step; gradient accumulation makes 8) and with checkpointing.
timeout 80 $PY bench/train_step.py --device cuda --model swin-base --image-size 1024 --batch-size 2 --steps 5 \
  --warmup 2 --variants fp32-reference,recipe,recipe+checkpointing --json "$OUT/train_1024_b2.json"
