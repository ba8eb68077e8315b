import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest


@pytest.fixture(autouse=True, scope="session")
def _hash_cache(tmp_path_factory):
    """Weight digests go to a per-session file, never to the user's ~/.cache."""
    os.environ["LINGUA_RAY_HASH_CACHE"] = str(tmp_path_factory.mktemp("hash") / "file-sha256.json")
    yield


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every test that needs it; started once per session."""
    import ray

    from lingua_ray.config import ClusterConfig
    from lingua_ray.schedule import init_ray

    init_ray(ClusterConfig(num_cpus=2))
    yield
    ray.shutdown()
