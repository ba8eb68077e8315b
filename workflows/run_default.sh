#!/usr/bin/env bash
# The main job on the embedded default: installs what it needs, then runs
# record → reduce → ablate → report for Gemma-3-270M over the UDHR (9 languages) on a local Ray.
# Extra arguments are Hydra overrides, e.g. `bash workflows/run_default.sh corpus=quran`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflows/setup_env.sh
export TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
.venv/bin/python workflows/pipeline.py "$@"
