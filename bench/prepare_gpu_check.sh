#!/usr/bin/env bash
# bash bench/prepare_gpu_check.sh     # here, before a device run: what a bare GPU machine lacks, into ignored folders
# .whl/: align's own wheel, trl, datasets, bitsandbytes (../shared/device/fetch-wheels.sh) and align's exact pins of
# the libraries the GPU image has in other versions; .gpu-check/tokenizer: the embedded model's tokenizer. Then,
# with the device tool, one call (the install included, at most 8 minutes on an H200):
#   run(command="bash bench/gpu_check_device.sh", carry=[".whl", ".gpu-check"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/device/fetch-wheels.sh transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 gguf==0.19.0 \
    safetensors==0.8.0 tokenizers==0.23.3
rm -rf .whl/align-*.whl build   # a stale build/ would put deleted files in the wheel
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
mkdir -p .gpu-check
.venv/bin/python - <<'PY'
from transformers import AutoTokenizer
from align.models import embedded_model_dir
AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(".gpu-check/tokenizer")
PY
du -sh .whl .gpu-check
