#!/usr/bin/env bash
# The test suite (what CI runs): installs into .venv if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflows/setup_env.sh
export TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
# Where chromium is installed (CI installs it) the report's browser tests must run, not skip.
command -v chromium >/dev/null && export LINGUA_RAY_REQUIRE_BROWSER=${LINGUA_RAY_REQUIRE_BROWSER:-1}
.venv/bin/python -m pytest "$@"
