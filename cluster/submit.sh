#!/usr/bin/env bash
# Submit the whole pipeline to a running Ray cluster; arguments are Hydra overrides.
#
#   bash cluster/submit.sh model=bloom-560m-trajectory store.path=s3://BUCKET/lingua_ray/bloom-560m-udhr.zarr
#   RAY_ADDRESS=http://127.0.0.1:8265 bash cluster/submit.sh --no-wait model=bloom-1b1
#
# RAY_ADDRESS: the job server (default: the port-forward of `ray dashboard cluster/ray-cluster.yaml`).
# Leading --ray-options (e.g. --no-wait, --submission-id=ID) go to `ray job submit`; the rest to Hydra.
# Blocks until the job ends and exits with its status (unless --no-wait), so cron and flock see it.
set -euo pipefail
cd "$(dirname "$0")/.."

ray_opts=()
while [ $# -gt 0 ] && [[ $1 == --* ]]; do
  ray_opts+=("$1")
  shift
done

# `ray job submit` joins the entrypoint into one string that /bin/sh parses again on the head, so
# quote each override for that shell ('${run.name}' must reach Hydra, not the shell). Ray's join
# would wrap an argument holding whitespace in double quotes and break that quoting: refuse it.
overrides=()
for a in "$@"; do
  if [[ $a =~ [[:space:]] ]]; then
    echo "submit.sh: override '$a' contains whitespace; write it without spaces (e.g. corpus.languages=[en,fr])" >&2
    exit 2
  fi
  overrides+=("'${a//\'/\'\\\'\'}'")
done

exec ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env cluster/runtime_env.yaml \
  "${ray_opts[@]}" \
  -- python workflows/pipeline.py cluster=gpu "${overrides[@]}"
