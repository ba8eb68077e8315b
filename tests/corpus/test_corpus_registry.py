import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lingua_ray.corpus import (
    CORPUS_SOURCES,
    DEFAULT_LANGUAGES,
    CorpusConfig,
    CorpusError,
    ParallelCorpus,
    get_source,
    load_corpus,
    register_source,
)

S = 30


def synthetic(cfg: CorpusConfig) -> ParallelCorpus:
    uids = [f"t{i:02d}" for i in range(S)]
    return ParallelCorpus.from_dict("synthetic", uids, {l: [f"{l} {u}" for u in uids] for l in cfg.languages})


@pytest.fixture
def temp_source():
    name = "_test_synthetic"
    register_source(name)(synthetic)
    yield name
    CORPUS_SOURCES.unregister(name)


def test_builtin_sources_registered():
    assert {"udhr", "quran", "jsonl", "flores", "bible_para"} <= set(CORPUS_SOURCES)


def test_unknown_source_lists_registered_and_suggests():
    expected = r"unknown corpus source 'udhrr'; valid: .*\bquran\b.*\. Did you mean 'udhr'\?"
    with pytest.raises(CorpusError, match=expected):
        load_corpus(CorpusConfig(source="udhrr"))
    with pytest.raises(CorpusError, match=r"unknown corpus source 'zzzzzzzz'.*\bjsonl\b") as e:
        load_corpus(CorpusConfig(source="zzzzzzzz"))
    assert "Did you mean" not in str(e.value)


def test_register_source_twice_is_an_error(temp_source):
    register_source(temp_source)(synthetic)  # the same function again: harmless
    with pytest.raises(CorpusError, match="already registered"):
        register_source(temp_source)(lambda cfg: synthetic(cfg))
    assert get_source(temp_source) is synthetic
    with pytest.raises(CorpusError, match="non-empty str"):
        register_source("")


def test_sources_table_is_a_registry():
    from lingua_ray.registry import Registry

    assert isinstance(CORPUS_SOURCES, Registry) and CORPUS_SOURCES.error is CorpusError
    with pytest.raises(CorpusError, match=r"Did you mean 'quran'"):
        get_source("quaran")


def test_max_units_is_a_seeded_draw_in_corpus_order(temp_source):
    full = load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"]))
    a = load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"], max_units=8, seed=1))
    b = load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"], max_units=8, seed=1))
    c = load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"], max_units=8, seed=2))
    assert a.S == 8 and a.fingerprint() == b.fingerprint()
    assert a.unit_ids != c.unit_ids
    assert list(a.unit_ids) == sorted(a.unit_ids) and set(a.unit_ids) <= set(full.unit_ids)
    assert a.texts("fr") == [f"fr {u}" for u in a.unit_ids]
    big = load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"], max_units=S + 5))
    assert big.fingerprint() == full.fingerprint()


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, True])
def test_bad_max_units(temp_source, bad):
    with pytest.raises(CorpusError, match="max_units"):
        load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr"], max_units=bad))


def test_bad_language_lists(temp_source):
    with pytest.raises(CorpusError, match="listed twice"):
        load_corpus(CorpusConfig(source=temp_source, languages=["en", "fr", "en"]))
    with pytest.raises(CorpusError, match="at least 2 languages"):
        load_corpus(CorpusConfig(source=temp_source, languages=["en"]))


def test_loader_breaking_the_language_contract_is_caught():
    register_source("_test_bad")(lambda cfg: synthetic(CorpusConfig(languages=list(reversed(cfg.languages)))))
    try:
        with pytest.raises(CorpusError, match=r"returned languages \['fr', 'en'\], asked for \['en', 'fr'\]"):
            load_corpus(CorpusConfig(source="_test_bad", languages=["en", "fr"]))
    finally:
        CORPUS_SOURCES.unregister("_test_bad")


def test_config_defaults_and_hydra_structured(temp_source):
    cfg = CorpusConfig()
    assert cfg.source == "udhr" and tuple(cfg.languages) == DEFAULT_LANGUAGES
    assert (cfg.max_units, cfg.path, cfg.hub_name, cfg.hub_split, cfg.hub_revision, cfg.seed) == (None,) * 5 + (0,)
    assert cfg.cache_dir == "~/.cache/lingua_ray/npm"
    node = OmegaConf.structured(CorpusConfig)
    node.source = temp_source
    node.languages = ["en", "zh"]
    node.max_units = 4
    with pytest.raises(ValidationError):
        node.max_units = "many"  # typed: OmegaConf rejects it
    c = load_corpus(node)  # a DictConfig is accepted
    assert c.languages == ("en", "zh") and c.S == 4
    c = load_corpus({"source": temp_source, "languages": ("id", "ar")})  # and a plain mapping
    assert c.languages == ("id", "ar")
    with pytest.raises(CorpusError, match=r"unknown corpus config key\(s\) \['langs'\]"):
        load_corpus({"source": temp_source, "langs": ["en", "fr"]})
