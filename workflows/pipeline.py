"""The one entry point: every stage in order, or the ones named (each resumes).

    python workflows/pipeline.py [hydra overrides...]
    python workflows/pipeline.py 'stages=[reduce,report]'

Errors print as one line; LINGUA_RAY_DEBUG=1 shows the traceback.
"""

import hydra

from lingua_ray.config import register_configs, to_run_config
from lingua_ray.entry import one_line_errors
from lingua_ray.pipeline import run

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg) -> None:
    one_line_errors(lambda: run(to_run_config(cfg)))


if __name__ == "__main__":
    main()
