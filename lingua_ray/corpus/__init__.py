"""Parallel corpora: `ParallelCorpus` (languages × aligned units) and its sources.

Importing this package registers the built-in sources (udhr, quran, jsonl, flores,
bible_para) in `CORPUS_SOURCES`; `load_corpus(CorpusConfig(...))` picks one by name.
"""

from .base import CorpusError, CorpusSourceUnavailable, ParallelCorpus
from .config import DEFAULT_LANGUAGES, NPM_CACHE_ENV, CorpusConfig
from .registry import CORPUS_SOURCES, get_source, load_corpus, register_source

# Imported for their @register_source side effect.
from . import hub, jsonl, quran, udhr  # noqa: E402,F401  isort: skip

__all__ = [
    "CORPUS_SOURCES",
    "DEFAULT_LANGUAGES",
    "NPM_CACHE_ENV",
    "CorpusConfig",
    "CorpusError",
    "CorpusSourceUnavailable",
    "ParallelCorpus",
    "get_source",
    "load_corpus",
    "register_source",
]
