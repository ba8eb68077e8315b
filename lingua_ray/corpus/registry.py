"""Corpus source registry: a `Registry` of name → loader, filled by `@register_source`.

A loader takes a `CorpusConfig` and returns a `ParallelCorpus` whose languages are
``cfg.languages`` in order. `load_corpus` applies ``max_units`` and checks that contract,
so each loader only has to get the alignment right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from lingua_ray.registry import Registry

from .base import CorpusError, ParallelCorpus, check_languages
from .config import CorpusConfig

Loader = Callable[[CorpusConfig], ParallelCorpus]

# Unknown names raise CorpusError, so callers of load_corpus catch one exception type.
CORPUS_SOURCES: Registry[Loader] = Registry("corpus source", error=CorpusError)


def register_source(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register `fn` as the loader of source `name` (a name can be taken once;
    registering the same function again is harmless)."""
    if not isinstance(name, str) or not name:  # fail at the decorator line, not at decoration
        raise CorpusError(f"corpus source name must be a non-empty str, got {name!r}")
    return CORPUS_SOURCES.decorator(name)


def _as_config(cfg: Any) -> CorpusConfig:
    if isinstance(cfg, CorpusConfig):
        return cfg
    try:  # a Hydra/OmegaConf node: resolve it to plain Python first
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_object(cfg)
            if isinstance(cfg, CorpusConfig):
                return cfg
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        pass
    if isinstance(cfg, Mapping):
        known = {f.name for f in fields(CorpusConfig)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise CorpusError(f"unknown corpus config key(s) {unknown}; known: {sorted(known)}")
        return CorpusConfig(**{k: (list(v) if k == "languages" else v) for k, v in cfg.items()})
    raise CorpusError(f"expected a CorpusConfig or a mapping, got {type(cfg).__name__}")


def get_source(name: str) -> Loader:
    """The loader of `name`; an unknown name raises CorpusError listing the registered ones
    and the closest match."""
    return CORPUS_SOURCES.get(name)


def load_corpus(cfg: CorpusConfig | Mapping[str, Any]) -> ParallelCorpus:
    """Load the corpus `cfg` describes: ``cfg.languages`` in order, at most ``cfg.max_units``
    units (a draw seeded by ``cfg.seed``, kept in corpus order)."""
    cfg = _as_config(cfg)
    loader = get_source(cfg.source)
    check_languages(cfg.languages, f"corpus source {cfg.source!r}")
    if cfg.max_units is not None and (
        isinstance(cfg.max_units, bool) or not isinstance(cfg.max_units, int) or cfg.max_units < 2
    ):
        raise CorpusError(f"max_units must be an int ≥ 2 or None, got {cfg.max_units!r}")
    corpus = loader(cfg)
    if corpus.languages != tuple(cfg.languages):
        raise CorpusError(
            f"source {cfg.source!r} returned languages {list(corpus.languages)}, asked for {list(cfg.languages)}"
        )
    if cfg.max_units is not None and cfg.max_units < corpus.S:
        # A seeded draw rather than the first units: sources are ordered (chapters,
        # articles), and a prefix would cover only their first topics.
        keep = np.sort(np.random.default_rng(cfg.seed).choice(corpus.S, cfg.max_units, replace=False))
        corpus = corpus.select(units=keep.tolist())
    return corpus
