#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach PyPI, into .whl/ (git-ignored): the project's transformers (the version
# requirements.txt pins) and what the benchmarks import that the GPU image lacks (albumentations, datasets and their
# dependencies; the image's list is in the device tool's KINDS.md). Versions are those of the environment running this
# script (the project's, where the tests pass); binary wheels are fetched for the GPU machine's Python.
# bench/gpu_run.sh installs them there into a temporary folder put first on PYTHONPATH. torch cannot travel this way
# (its CUDA wheels are gigabytes), so GPU figures use the machine's own torch and say which.
# Usage (repo root, with PyPI access): PY=/work/main/.venv/bin/python bash bench/fetch_pinned.sh
set -eu
PY=${PY:-python3}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
NAMES="transformers albumentations albucore stringzilla simsimd pydantic pydantic-core annotated-types
typing-inspection typing-extensions datasets dill multiprocess"
pinned=$(sed -n 's/^transformers==\([^ #]*\).*/\1/p' requirements.txt)
specs=$($PY - $NAMES <<'EOF'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
case " $specs " in
  *" transformers==$pinned "*) ;;
  *) echo "this environment's transformers is not the pinned $pinned: $specs" >&2; exit 2 ;;
esac
mkdir -p .whl
platforms=""
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $tag"
done
# shellcheck disable=SC2086  # word splitting of the lists is intended
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
  $platforms -d .whl $specs
ls -l .whl
du -sh .whl
