#!/usr/bin/env bash
# The GPU measurements recorded in BENCHMARKS.md, as one script (run from the repo root on a CUDA machine).
#
#   PY=/work/main/.venv/bin/python bash bench/fetch_pinned.sh   # first, where PyPI is reachable: wheels → .whl/
#   OUT=results bash bench/gpu_run.sh                            # on the GPU machine (device tool: carry [".whl"])
#   STAGES="train profile" OUT=results bash bench/gpu_run.sh     # a subset of: train profile inference sweep
#
# The pinned transformers, and what the GPU image lacks (albumentations, datasets and their dependencies), travel as
# wheels in .whl/ and are installed into a temporary folder put first on PYTHONPATH. torch cannot travel (gigabytes of
# CUDA wheels), so the machine's own torch runs. Every script prints the torch and transformers versions next to its
# figures and writes them into its JSON, so a figure measured with other versions says so.
# Time on an H100/H200 (estimates; each stage has a timeout): train ~4 min, profile ~2 min, inference ~3 min; run it
# as two calls ("train profile", then "inference") where one call may last at most 10 minutes.
set -u
OUT=${OUT:-bench-results}
STAGES=${STAGES:-train profile inference}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  if $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "WARNING: the wheels in .whl/ do not install here; measuring with the machine's own packages."
  fi
else
  echo "WARNING: no .whl/ (run bench/fetch_pinned.sh first); measuring with the machine's own packages."
fi
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" $PY -c "import cxrseg.inference.segmenter, cxrseg.evaluation.evaluate, cxrseg.training.losses" \
  || echo "WARNING: cxrseg does not import with these packages (see the error above); the stages below will fail."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee "$OUT/versions.txt"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
if stage train; then
  # 512², batch 32: Swin attention eager vs SDPA, without and with torch.compile, against the fp32 reference loop.
  timeout 330 $PY bench/train_step.py --device cuda --model swin-base --image-size 512 --batch-size 32 --steps 5 \
    --warmup 2 --variants fp32-reference,recipe,recipe+eager-attention,+compile,+compile+eager-attention \
    --json "$OUT/train_512_b32.json"
fi
if stage profile; then
  # Where the compiled step's GPU time goes, by kernel family (bench/profile_step.py's docstring).
  timeout 200 $PY bench/profile_step.py --device cuda --model swin-base --image-size 512 --batch-size 32 \
    --variant +compile --steps 3 --json "$OUT/profile_512_b32_compiled.json"
fi
if stage inference; then
  # cxrseg predict / evaluate against a plain pipeline("image-segmentation") loop over the same 512² PNGs.
  timeout 240 $PY bench/inference.py --device cuda --model swin-base --image-size 512 --num-images 256 \
    --batch-size 32 --num-workers 8 --repeats 2 --variants fp32,fp32+eager,bf16,bf16+compile \
    --json "$OUT/inference_512.json"
fi
if stage sweep; then
  # The earlier sweep at batch 16 (every variant, cumulative) and 1024² memory; not part of the default run.
  timeout 220 $PY bench/train_step.py --device cuda --model swin-base --image-size 512 --batch-size 16 --steps 6 \
    --warmup 2 --json "$OUT/train_512_b16.json"
  timeout 80 $PY bench/train_step.py --device cuda --model swin-base --image-size 1024 --batch-size 2 --steps 5 \
    --warmup 2 --variants fp32-reference,recipe,recipe+checkpointing --json "$OUT/train_1024_b2.json"
fi
