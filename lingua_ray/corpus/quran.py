"""`quran` source: the Quran in Arabic and ten translations, from npm package ``quran-json``.

``package/dist/quran.json`` holds the Arabic (``text``); ``package/dist/quran_<lang>.json``
holds one translation (``translation``) next to the same Arabic. Both are a list of 114
chapters ``{id, ..., verses: [{id, text[, translation]}]}``. Units are verses, aligned by
(chapter, verse) number: ``quran:<chapter>:<verse>``, 6236 of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .base import CorpusError, ParallelCorpus
from .config import CorpusConfig
from .npm import fetch_npm_package
from .registry import register_source

QURAN_PACKAGE = "quran-json"
QURAN_VERSION = "3.1.2"
QURAN_TRANSLATIONS: tuple[str, ...] = ("en", "zh", "fr", "es", "id", "bn", "ru", "sv", "tr", "ur")
QURAN_LANGUAGES: tuple[str, ...] = ("ar", *QURAN_TRANSLATIONS)

# Only the per-language files: the package's 7000 per-verse and per-chapter files would
# triple the cache for nothing.
_MEMBER = re.compile(r"^package/(dist/quran(_[a-z]+)?\.json|package\.json|LICENSE\.txt)$")


def _read_verses(path: Path, field: str) -> dict[tuple[int, int], object]:
    try:
        chapters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: cannot read quran-json file: {e}") from None
    out: dict[tuple[int, int], object] = {}
    try:
        for ch in chapters:
            for v in ch["verses"]:
                out[(int(ch["id"]), int(v["id"]))] = v[field]
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{path}: unexpected quran-json layout ({type(e).__name__}: {e})") from None
    return out


@register_source("quran")
def load_quran(cfg: CorpusConfig) -> ParallelCorpus:
    unknown = [l for l in cfg.languages if l not in QURAN_LANGUAGES]
    if unknown:
        raise CorpusError(f"quran: unknown language(s) {unknown}; quran-json has {list(QURAN_LANGUAGES)}")
    dist = fetch_npm_package(QURAN_PACKAGE, QURAN_VERSION, cfg.cache_dir, lambda m: bool(_MEMBER.match(m))) / "dist"
    verses = {
        lang: _read_verses(dist / "quran.json", "text")
        if lang == "ar"
        else _read_verses(dist / f"quran_{lang}.json", "translation")
        for lang in cfg.languages
    }
    first = cfg.languages[0]
    keys = sorted(verses[first])
    for lang in cfg.languages[1:]:
        if set(verses[lang]) != set(keys):
            missing = sorted(set(keys) ^ set(verses[lang]))[:5]
            raise CorpusError(f"quran: verse sets of {first!r} and {lang!r} differ, e.g. at (chapter, verse) {missing}")
    uids = [f"quran:{c}:{v}" for c, v in keys]
    return ParallelCorpus.from_dict("quran", uids, {l: [verses[l][k] for k in keys] for l in cfg.languages})
