#!/usr/bin/env bash
# bash bench/gpu_check_device.sh      # on a bare GPU machine (the device tool), after bench/prepare_gpu_check.sh here
# Installs the wheels carried in .whl/ beside the machine's own torch, then runs make gpu-check's script with the
# carried tokenizer (the embedded model's 98 MB GGUF is over the device tool's 64 MiB transfer limit, so the stage
# check there runs the embedded model's architecture with random weights). Results go to $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
    export PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 bench/gpu_check.py --tokenizer .gpu-check/tokenizer --results "${OUT:-bench/results}" "$@"
