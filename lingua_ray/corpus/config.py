"""`CorpusConfig` lives in lingua_ray/config.py with every other config; re-exported here for the sources."""

from lingua_ray.config import DEFAULT_LANGUAGES, DEFAULT_NPM_CACHE, NPM_CACHE_ENV, CorpusConfig

__all__ = ["DEFAULT_LANGUAGES", "DEFAULT_NPM_CACHE", "NPM_CACHE_ENV", "CorpusConfig"]
