#!/usr/bin/env bash
# The GPU check of issue 11: recorder tokens/s and MFU in bfloat16 for a BLOOM-560m-shaped and a
# LLaMA-7B-shaped random-initialised model, the authors' way for the smaller one, and the bf16-vs-fp32
# deviation. No network; about 3-6 minutes on one H100/H200, hard limit 8 minutes.
#
#   bash bench/gpu_check.sh            # from the repository root, on a machine with one CUDA GPU
#   PYTHON=/path/to/python bash bench/gpu_check.sh
#
# Needs a Python with CUDA torch, transformers, tokenizers and numpy (lingua_ray is taken from the
# checkout via PYTHONPATH; nothing is installed or downloaded). Output goes to stdout; record it in
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in .venv/bin/python python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch, transformers, tokenizers, numpy" 2>/dev/null; then
      PY="$c"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "gpu_check: no python with torch, transformers, tokenizers and numpy found; set PYTHON=" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
"$PY" -c "import torch; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec timeout 480 "$PY" bench/gpu_check.py "$@"
