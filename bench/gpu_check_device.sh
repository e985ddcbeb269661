#!/usr/bin/env bash
# bash bench/gpu_check_device.sh      # on a bare GPU machine (the device tool), after bench/prepare_gpu_check.sh here
# Installs the wheels carried in .whl/ (align's own among them) beside the machine's own torch, then runs make
# gpu-check's script from a scratch directory, so that `align` is the installed wheel exactly as a user has it
# (align.reward, align.ui and align.recipes exist only in an installed align). The carried tokenizer stands in for
# the embedded model, whose 98 MB GGUF is over the device tool's 64 MiB transfer limit: the stage check there runs
# the embedded model's architecture with random weights. Results go to $OUT when it is set, as they come.
#   PYTHON (default python3) and WHEELS (default .whl) choose the interpreter and the wheels (tests use both);
#   arguments go on to bench/gpu_check.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
wheels=${WHEELS:-$repo/.whl}
# named site-packages: dill (datasets' fingerprints) pickles by value what it thinks is not installed, and a
# library outside such a folder fails that way (pyarrow's MonthDayNano cannot be pickled by value)
site=$(mktemp -d)/site-packages
ls "$wheels"/align-*.whl >/dev/null || { echo "no align wheel in $wheels: run bench/prepare_gpu_check.sh first" >&2; exit 2; }
started=$(date +%s)
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
echo "[gpu-check] installed $(ls "$wheels" | wc -l) wheels in $(( $(date +%s) - started )) s"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$(dirname "$site")"   # not the checkout: there `import align` would find the source tree instead
"$python" -c "import align.reward, align.recipes, align.ui, align.stages.ppo" \
    || { echo "the installed align is incomplete" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
tokenizer=()
[ -d "$repo/.gpu-check/tokenizer" ] && tokenizer=(--tokenizer "$repo/.gpu-check/tokenizer")
exec "$python" "$repo/bench/gpu_check.py" ${tokenizer[@]+"${tokenizer[@]}"} --results "${OUT:-$repo/bench/results}" "$@"
