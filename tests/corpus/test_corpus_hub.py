"""flores and bible_para against in-memory fakes of the hub datasets' real schemas
(the hub is not reachable from CI); `datasets.load_dataset` is monkeypatched."""

import random

import datasets
import pytest

from lingua_ray.corpus import CorpusConfig, CorpusError, CorpusSourceUnavailable, load_corpus
from lingua_ray.corpus.testing import CorpusSourceConformance

# --- FLORES ------------------------------------------------------------------------------

N_FLORES = 12


def flores_plus_table(code: str, shuffle_seed: int | None = None) -> datasets.Dataset:
    """A FLORES+ per-language config: its real columns, sentence k tagged ``#k``."""
    lang, script = code.split("_")
    ids = list(range(1, N_FLORES + 1))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ids)  # alignment must go by id, not row order
    n = len(ids)
    return datasets.Dataset.from_dict(
        {
            "id": ids,
            "iso_639_3": [lang] * n,
            "iso_15924": [script] * n,
            "glottocode": ["xxxx1234"] * n,
            "text": [f"{code} #{i}: sentence" for i in ids],
            "url": [f"https://example.org/{i}" for i in ids],
            "domain": ["wikinews"] * n,
            "topic": ["t"] * n,
            "has_image": ["no"] * n,
            "has_hyperlink": ["no"] * n,
            "last_updated": ["2.1"] * n,
        }
    )


def flores200_table(code: str) -> datasets.Dataset:
    """facebook/flores (FLORES-200) schema: the text column is ``sentence``; one id missing."""
    ids = [i for i in range(1, N_FLORES + 1) if not (code == "fra_Latn" and i == 5)]
    n = len(ids)
    return datasets.Dataset.from_dict(
        {
            "id": ids,
            "URL": ["u"] * n,
            "domain": ["d"] * n,
            "topic": ["t"] * n,
            "has_image": [0] * n,
            "has_hyperlink": [0] * n,
            "sentence": [f"{code} #{i}: sentence" for i in ids],
        }
    )


FLORES_PLUS_CONFIGS = {"eng_Latn", "fra_Latn", "cmn_Hans", "deu_Latn", "arb_Arab"}
FLORES200_CONFIGS = {"eng_Latn", "fra_Latn", "zho_Hans"}


def fake_load_dataset(calls: list):
    def load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision))
        if path == "openlanguagedata/flores_plus":
            if name not in FLORES_PLUS_CONFIGS:
                raise ValueError(f"BuilderConfig '{name}' not found. Available: {sorted(FLORES_PLUS_CONFIGS)}")
            return flores_plus_table(name, shuffle_seed=len(name) if name == "fra_Latn" else None)
        if path == "facebook/flores":
            if name not in FLORES200_CONFIGS:
                raise ValueError(f"BuilderConfig '{name}' not found. Available: {sorted(FLORES200_CONFIGS)}")
            return flores200_table(name)
        if path == "Helsinki-NLP/bible_para":
            if name not in BIBLE_PAIRS:
                raise ValueError(f"BuilderConfig '{name}' not found. Available: {sorted(BIBLE_PAIRS)}")
            return bible_pair(name)
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    return load_dataset


@pytest.fixture
def hub_calls(monkeypatch):
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(calls))
    return calls


class TestFloresConformance(CorpusSourceConformance):
    source = "flores"
    languages = ("fr", "en", "zh")
    max_units = 4

    @pytest.fixture
    def make_config(self, hub_calls):
        return lambda **kw: CorpusConfig(source="flores", **kw)


def test_flores_aligns_by_id_not_row_order(hub_calls):
    c = load_corpus(CorpusConfig(source="flores", languages=["en", "fr", "de", "ar"]))
    assert c.unit_ids == tuple(f"flores:devtest:{i}" for i in range(1, N_FLORES + 1))
    for s, uid in enumerate(c.unit_ids):
        k = uid.rsplit(":", 1)[1]
        for lang in c.languages:
            assert f"#{k}:" in c.text(lang, s)
    assert {(p, n, s) for p, n, s, _ in hub_calls} == {
        ("openlanguagedata/flores_plus", code, "devtest") for code in ("eng_Latn", "fra_Latn", "deu_Latn", "arb_Arab")
    }


def test_flores_plus_chinese_config_and_full_codes(hub_calls):
    c = load_corpus(CorpusConfig(source="flores", languages=["zh", "eng_Latn"], hub_revision="v2.1"))
    assert c.text("zh", 0).startswith("cmn_Hans #1")
    assert ("openlanguagedata/flores_plus", "cmn_Hans", "devtest", "v2.1") in hub_calls


def test_flores200_schema_split_and_missing_ids(hub_calls):
    cfg = CorpusConfig(source="flores", languages=["en", "zh", "fr"], hub_name="facebook/flores", hub_split="dev")
    c = load_corpus(cfg)
    assert c.text("zh", 0).startswith("zho_Hans #1")
    assert "flores:dev:5" not in c.unit_ids  # French lacks it: dropped for all
    assert c.S == N_FLORES - 1


def test_flores_hub_unreachable_names_alternatives(monkeypatch):
    def unreachable(*a, **kw):
        raise ConnectionError("Couldn't reach 'openlanguagedata/flores_plus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CorpusSourceUnavailable, match=r"unreachable.*'udhr'.*'quran'.*'jsonl'"):
        load_corpus(CorpusConfig(source="flores", languages=["en", "fr"]))


# --- bible_para --------------------------------------------------------------------------

VERSES = [f"In the beginning {k}." for k in range(10)]
VERSES[6] = VERSES[2]  # a repeated English line: an ambiguous pivot


def translate(lang: str, k: int) -> str:
    return f"[{lang}] verse {k}"


def bible_pair(config: str) -> datasets.Dataset:
    """A bible_para pair config: ``id`` counts lines within the pair, ``translation`` holds both."""
    a, b = config.split("-")
    other = a if b == "en" else b
    ks = [k for k in range(len(VERSES)) if not (other == "fr" and k == 1)]  # fr misses a verse
    if other == "es":
        ks = ks[::-1]  # another pair in another order
    rows = [{"en": VERSES[k], other: translate(other, k)} for k in ks]
    return datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(len(rows))], "translation": rows},
        features=datasets.Features({"id": datasets.Value("string"), "translation": datasets.Translation([a, b])}),
    )


BIBLE_PAIRS = {"de-en", "en-fr", "en-es"}


class TestBibleParaConformance(CorpusSourceConformance):
    source = "bible_para"
    languages = ("fr", "en", "de")
    max_units = 3

    @pytest.fixture
    def make_config(self, hub_calls):
        return lambda **kw: CorpusConfig(source="bible_para", **kw)


def verse_of(text: str) -> int:
    return int(text.rsplit(" ", 1)[1].rstrip("."))


def test_bible_para_aligns_through_english_not_pair_ids(hub_calls):
    c = load_corpus(CorpusConfig(source="bible_para", languages=["en", "de", "fr", "es"]))
    # Verse 1 is missing from en-fr; verses 2 and 6 share their English line: all dropped.
    kept = [verse_of(t) for t in c.texts("de")]
    assert kept == [0, 3, 4, 5, 7, 8, 9]
    for s in range(c.S):
        k = kept[s]
        assert c.text("en", s) == VERSES[k]
        assert c.text("fr", s) == translate("fr", k)
        assert c.text("es", s) == translate("es", k)
    assert {n for _, n, _, _ in hub_calls} == {"de-en", "en-fr", "en-es"}


def test_bible_para_ids_do_not_depend_on_language_set(hub_calls):
    a = load_corpus(CorpusConfig(source="bible_para", languages=["de", "en"]))
    b = load_corpus(CorpusConfig(source="bible_para", languages=["en", "de", "fr"]))
    shared = set(a.unit_ids) & set(b.unit_ids)
    assert len(shared) == b.S
    for uid in shared:
        assert a.text("de", a.index(uid)) == b.text("de", b.index(uid))


def test_bible_para_pivot_need_not_be_requested(hub_calls):
    c = load_corpus(CorpusConfig(source="bible_para", languages=["es", "fr"]))
    assert c.languages == ("es", "fr")
    assert all(verse_of(e) == verse_of(f) for e, f in zip(c.texts("es"), c.texts("fr"), strict=True))


def test_bible_para_hub_unreachable_names_alternatives(monkeypatch):
    def offline(*a, **kw):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusSourceUnavailable, match=r"Hugging Face hub.*unreachable.*udhr.*jsonl"):
        load_corpus(CorpusConfig(source="bible_para", languages=["en", "de"]))


def test_missing_hub_dataset_is_unavailable(hub_calls):
    with pytest.raises(CorpusSourceUnavailable, match=r"'someone/missing'"):
        load_corpus(CorpusConfig(source="flores", languages=["en", "fr"], hub_name="someone/missing"))


def test_unknown_flores_code_is_rejected_before_the_hub(hub_calls):
    with pytest.raises(CorpusError, match=r"flores: unknown language 'xx'.*deu_Latn"):
        load_corpus(CorpusConfig(source="flores", languages=["en", "xx"]))
    assert hub_calls == []
