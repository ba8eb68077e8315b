"""Only the reduce stage (reads what the previous stage wrote).

    python workflows/reduce.py [hydra overrides...]
"""

import hydra

from lingua_ray.config import register_configs, to_run_config
from lingua_ray.pipeline import run

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg) -> None:
    run(to_run_config(cfg), ["reduce"])


if __name__ == "__main__":
    main()
