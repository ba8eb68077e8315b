"""`CorpusSourceConformance`: the contract every corpus source must meet, as pytest tests.

Subclass it in a test module (name the subclass ``Test...``), set `source` and
`languages`, and provide a `make_config` fixture that returns a factory
``make(languages=..., max_units=...) -> CorpusConfig`` for that source. Third-party
sources registered with `register_source` can reuse it unchanged. Needs pytest.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest

from .base import CorpusError, ParallelCorpus
from .config import CorpusConfig
from .registry import CORPUS_SOURCES, load_corpus

MakeConfig = Callable[..., CorpusConfig]

UNKNOWN_LANGUAGE = "zz_nonexistent"


class CorpusSourceConformance:
    source: str = ""
    # At least 3 languages the source has, deliberately not in sorted order.
    languages: tuple[str, ...] = ()
    max_units: int = 3

    @pytest.fixture
    def make_config(self) -> MakeConfig:  # pragma: no cover - subclasses override
        raise NotImplementedError("subclasses provide a make_config fixture")

    def load(self, make_config: MakeConfig, **kw) -> ParallelCorpus:
        kw.setdefault("languages", list(self.languages))
        return load_corpus(make_config(**kw))

    def test_is_registered(self):
        assert self.source in CORPUS_SOURCES

    def test_returns_parallel_corpus(self, make_config):
        c = self.load(make_config)
        assert isinstance(c, ParallelCorpus)
        assert c.K == len(self.languages) and c.S >= 2

    def test_languages_as_requested_in_order(self, make_config):
        assert self.load(make_config).languages == tuple(self.languages)
        flipped = list(reversed(self.languages))
        c = self.load(make_config, languages=flipped)
        assert c.languages == tuple(flipped)
        assert list(c.dataset.column_names) == ["uid", *flipped]

    def test_language_order_does_not_change_alignment(self, make_config):
        a = self.load(make_config)
        b = self.load(make_config, languages=list(reversed(self.languages)))
        assert a.unit_ids == b.unit_ids
        for lang in self.languages:
            assert a.texts(lang) == b.texts(lang)

    def test_unit_ids_unique_str(self, make_config):
        c = self.load(make_config)
        assert len(set(c.unit_ids)) == c.S
        assert all(isinstance(u, str) and u.strip() for u in c.unit_ids)

    def test_texts_nonempty_and_nfc(self, make_config):
        c = self.load(make_config)
        for lang in c.languages:
            texts = c.texts(lang)
            assert len(texts) == c.S
            for t in texts:
                assert isinstance(t, str) and t.strip()
                assert unicodedata.normalize("NFC", t) == t

    def test_deterministic(self, make_config):
        a, b = self.load(make_config), self.load(make_config)
        assert a.fingerprint() == b.fingerprint()
        assert a.unit_ids == b.unit_ids

    def test_max_units_respected(self, make_config):
        full = self.load(make_config)
        assert full.S > self.max_units, "pick max_units below the source's unit count"
        c = self.load(make_config, max_units=self.max_units)
        assert c.S == self.max_units
        # A subset of the full corpus, in corpus order, with the same texts.
        pos = [full.index(u) for u in c.unit_ids]
        assert pos == sorted(pos)
        for lang in self.languages:
            assert c.texts(lang) == [full.texts(lang)[p] for p in pos]

    def test_unknown_language_is_a_clear_error(self, make_config):
        with pytest.raises(CorpusError, match=UNKNOWN_LANGUAGE):
            self.load(make_config, languages=[self.languages[0], UNKNOWN_LANGUAGE])
