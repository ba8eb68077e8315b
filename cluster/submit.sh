#!/usr/bin/env bash
# Submit the whole pipeline to a running Ray cluster; arguments are Hydra overrides.
#
#   export LINGUA_RAY_STORAGE_ROOT=/mnt/lingua_ray/runs     # a folder every node sees: outputs go there
#   export RAY_AUTH_MODE=token                              # a Ray >= 2.60 head with token auth (the default)
#   bash cluster/submit.sh model=bloom-560m-trajectory 'store.path=s3://BUCKET/lingua_ray/${run.name}.zarr'
#   RAY_ADDRESS=http://127.0.0.1:8265 bash cluster/submit.sh --no-wait model=bloom-1b1
#
# The job runs `python workflows/pipeline.py cluster=gpu <overrides>` on the head (a later cluster=
# or cluster.* override wins). Leading options are the submitter's: --no-wait, --submission-id=ID,
# --address=URL, --storage-root=PATH, --runtime-env=FILE, --no-check (see lingua_ray/submit.py).
# RAY_ADDRESS: the job server (default: the port-forward of `ray dashboard cluster/ray-cluster.yaml`).
# Token auth: RAY_AUTH_MODE=token; the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token (docs/operations.md, "Token authentication").
# Every member of the command is composed and checked here first (exit 2, nothing submitted, when
# refused); then it blocks until the job ends and exits with its status (unless --no-wait), so cron
# and flock see it.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${LINGUA_RAY_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python; fi
fi
exec "$py" -m lingua_ray.submit "$@"
