import pytest

from lingua_ray.corpus import DEFAULT_LANGUAGES, CorpusConfig, CorpusError, load_corpus
from lingua_ray.corpus.testing import CorpusSourceConformance
from lingua_ray.corpus.udhr import UDHR_FILES, align_sections, parse_declaration


class TestUdhrConformance(CorpusSourceConformance):
    source = "udhr"
    languages = ("fr", "en", "zh")
    max_units = 7

    @pytest.fixture
    def make_config(self, npm_cache):
        return lambda **kw: CorpusConfig(source="udhr", cache_dir=npm_cache, **kw)


def udhr(npm_cache, languages):
    return load_corpus(CorpusConfig(source="udhr", cache_dir=npm_cache, languages=list(languages)))


def test_every_table_entry_has_a_declaration(udhr_package):
    missing = {l: f for l, f in UDHR_FILES.items() if not (udhr_package / "declaration" / f"{f}.html").is_file()}
    assert not missing
    assert set(DEFAULT_LANGUAGES) <= set(UDHR_FILES)


def test_default_languages_give_51_units(npm_cache):
    c = load_corpus(CorpusConfig(cache_dir=npm_cache))
    assert c.languages == DEFAULT_LANGUAGES
    # 30 articles kept per paragraph (50 units) + the preamble as one unit: its paragraph
    # count differs (en 10, zh 8, fr 9, ...).
    assert c.S == 51
    assert c.unit_ids[0] == "udhr:preamble"
    assert sum(u.startswith("udhr:a") for u in c.unit_ids) == 50


def test_article_paragraphs_are_translations(npm_cache):
    c = udhr(npm_cache, ["en", "fr", "es"])
    i = c.index("udhr:a01.p01")
    assert "free and equal" in c.text("en", i)
    assert "libres et égaux" in c.text("fr", i)
    assert "libres e iguales" in c.text("es", i)
    # Article 13 has two numbered items in all three: kept as two units, in order.
    j, k = c.index("udhr:a13.p01"), c.index("udhr:a13.p02")
    assert "freedom of movement" in c.text("en", j) and "leave any country" in c.text("en", k)
    assert "circuler librement" in c.text("fr", j) and "quitter tout pays" in c.text("fr", k)


def test_unequal_preamble_becomes_one_unit(npm_cache, udhr_package):
    c = udhr(npm_cache, ["en", "zh"])
    assert "udhr:preamble" in c.unit_ids
    assert not any(u.startswith("udhr:preamble.") for u in c.unit_ids)
    en_paras = parse_declaration(udhr_package / "declaration" / "eng.html")["preamble"]
    assert len(en_paras) == 10
    assert c.text("en", c.index("udhr:preamble")) == " ".join(en_paras)
    # English and Spanish both have 10 preamble paragraphs: kept one unit per paragraph.
    c = udhr(npm_cache, ["en", "es"])
    assert [u for u in c.unit_ids if u.startswith("udhr:preamble")] == [f"udhr:preamble.p{k:02d}" for k in range(1, 11)]


def test_unequal_article_becomes_one_unit(npm_cache, udhr_package):
    folder = udhr_package / "declaration"
    en, pan = parse_declaration(folder / "eng.html"), parse_declaration(folder / "pan.html")
    assert len(en["a18"]) != len(pan["a18"])  # Punjabi splits article 18 in two items
    c = udhr(npm_cache, ["en", "pan"])
    assert "udhr:a18" in c.unit_ids and "udhr:a18.p01" not in c.unit_ids
    assert c.text("pan", c.index("udhr:a18")) == " ".join(pan["a18"])
    assert "udhr:a17.p01" in c.unit_ids  # equal neighbours stay per paragraph


def test_headings_are_not_units(npm_cache):
    c = udhr(npm_cache, ["en", "fr"])
    assert not any(t.startswith(("Article ", "Preamble", "Universal Declaration")) for t in c.texts("en"))
    assert all("  " not in t and t == t.strip() for t in c.texts("fr"))


def test_file_codes_are_accepted_directly(npm_cache):
    c = udhr(npm_cache, ["eng", "deu_1996", "rus"])
    assert c.languages == ("eng", "deu_1996", "rus")
    assert "Würde" in c.text("deu_1996", c.index("udhr:a01.p01"))


def test_unknown_language_suggests_codes(npm_cache):
    with pytest.raises(CorpusError, match=r"unknown language 'deu'.*deu_1996"):
        udhr(npm_cache, ["en", "deu"])
    with pytest.raises(CorpusError, match=r"unknown language '\.\./eng'"):
        udhr(npm_cache, ["en", "../eng"])


def test_parse_declaration_structure(tmp_path):
    html = """<!doctype html><html><body><h1>Title</h1>
      <header><h2>Preamble</h2><p>Whereas   one,\n  and &amp; two</p><p></p><p>Now</p></header>
      <article data-number="3"><h2>Article 3</h2><ol><li><p>Item a</p></li><li><p>Item b</p></li></ol></article>
      <article data-number="1"><h1>ONE</h1><p>First</p></article></body></html>"""
    path = tmp_path / "x.html"
    path.write_text(html, encoding="utf-8")
    assert parse_declaration(path) == {
        "preamble": ["Whereas one, and & two", "Now"],
        "a03": ["Item a", "Item b"],
        "a01": ["First"],
    }


def test_align_sections_rules():
    per_lang = {
        "en": {"preamble": ["p1", "p2"], "a01": ["x"], "a02": ["y1", "y2"], "a03": ["z"]},
        "fr": {"preamble": ["q1", "q2"], "a01": ["X"], "a02": ["Y"]},
    }
    uids, texts = align_sections(per_lang)
    # a03 is missing in fr: dropped; a02 counts differ: joined; sections sorted by number.
    assert uids == ["udhr:preamble.p01", "udhr:preamble.p02", "udhr:a01.p01", "udhr:a02"]
    assert texts["en"] == ["p1", "p2", "x", "y1 y2"]
    assert texts["fr"] == ["q1", "q2", "X", "Y"]
