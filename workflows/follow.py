"""The cron entry point: run the pipeline for the checkpoints not yet in the run's store.

    python workflows/follow.py follow.watch=/mnt/train/my-run [pipeline overrides...]
    python workflows/follow.py follow.hub_refs='global_step*' model=bloom-560m-trajectory
    RAY_ADDRESS=http://127.0.0.1:8265 python workflows/follow.py follow.watch=... [overrides...]

Without RAY_ADDRESS the pipeline runs in this process; with it, as a Ray job with a
deterministic submission id (lingua_ray/follow.py). Nothing new: exit 0, nothing written.
Errors print as one line; LINGUA_RAY_DEBUG=1 shows the traceback.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from lingua_ray.config import register_configs
from lingua_ray.entry import one_line_errors
from lingua_ray.follow import register_follow_schema, split_config, tick

register_configs()
register_follow_schema()  # after register_configs: conf/config.yaml's run_schema gains follow.*


@hydra.main(version_base=None, config_path="../conf", config_name="follow")
def main(cfg) -> None:
    def follow_once() -> int:
        follow, run_cfg = split_config(cfg)
        return tick(run_cfg, follow, list(HydraConfig.get().overrides.task), address=os.environ.get("RAY_ADDRESS"))

    sys.exit(one_line_errors(follow_once))


if __name__ == "__main__":
    main()
