"""The one entry point: every stage in order, or the ones named (each resumes).

    python workflows/pipeline.py [hydra overrides...]
    python workflows/pipeline.py 'stages=[reduce,report]'

Errors print as one line; LINGUA_RAY_DEBUG=1 shows the traceback.
"""

import os
import sys

import hydra

from lingua_ray.config import register_configs, to_run_config
from lingua_ray.pipeline import run

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg) -> None:
    try:
        run(to_run_config(cfg))
    except Exception as e:  # noqa: BLE001 - the entry point's one-line report
        if os.environ.get("LINGUA_RAY_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        print("(LINGUA_RAY_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
