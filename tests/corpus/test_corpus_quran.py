import json

import pytest

from lingua_ray.corpus import CorpusConfig, CorpusError, load_corpus
from lingua_ray.corpus.quran import QURAN_LANGUAGES
from lingua_ray.corpus.testing import CorpusSourceConformance


class TestQuranConformance(CorpusSourceConformance):
    source = "quran"
    languages = ("zh", "ar", "en")
    max_units = 40

    @pytest.fixture
    def make_config(self, npm_cache):
        return lambda **kw: CorpusConfig(source="quran", cache_dir=npm_cache, **kw)


def quran(npm_cache, languages, **kw):
    return load_corpus(CorpusConfig(source="quran", cache_dir=npm_cache, languages=list(languages), **kw))


def test_all_verses_aligned_by_chapter_and_verse(npm_cache, quran_package):
    c = quran(npm_cache, ["ar", "en", "fr"])
    assert c.S == 6236
    assert c.unit_ids[:2] == ("quran:1:1", "quran:1:2") and c.unit_ids[-1] == "quran:114:6"
    assert "In the name of Allah" in c.text("en", c.index("quran:1:1"))
    # Cross-check one verse in the middle against the raw file, by (chapter, verse).
    chapters = json.loads((quran_package / "dist" / "quran_fr.json").read_text(encoding="utf-8"))
    raw = next(v for ch in chapters if ch["id"] == 2 for v in ch["verses"] if v["id"] == 255)
    assert c.text("fr", c.index("quran:2:255")) == raw["translation"]


def test_every_language_loads(npm_cache):
    c = quran(npm_cache, QURAN_LANGUAGES, max_units=5)
    assert c.languages == QURAN_LANGUAGES and c.S == 5


def test_unknown_language_lists_available(npm_cache):
    with pytest.raises(CorpusError, match=r"unknown language\(s\) \['pt', 'vi'\].*'ar', 'en'"):
        quran(npm_cache, ["en", "pt", "vi"])
