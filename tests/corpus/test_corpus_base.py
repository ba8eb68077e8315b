import subprocess
import sys
import unicodedata

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_ray.corpus import CorpusError, ParallelCorpus

UIDS = ["u1", "u2", "u3", "u4", "u5", "u6"]
TEXTS = {
    "en": ["one", "two", "three", "four", "five", "six"],
    "fr": ["un", "deux", "trois", "quatre", "cinq", "six"],
    "id": ["satu", "dua", "tiga", "empat", "lima", "enam"],
}


def small(name="small", uids=UIDS, texts=TEXTS) -> ParallelCorpus:
    return ParallelCorpus.from_dict(name, uids, texts)


def test_from_dict_shape_and_access():
    c = small()
    assert c.languages == ("en", "fr", "id")
    assert c.unit_ids == tuple(UIDS)
    assert (c.K, c.S, len(c)) == (3, 6, 6)
    assert c.texts("fr") == TEXTS["fr"]
    assert c.text("id", 2) == "tiga" and c.text("en", -1) == "six"
    assert c.index("u4") == 3
    assert c.dataset.column_names == ["uid", "en", "fr", "id"]
    assert c.dataset["fr"][:] == TEXTS["fr"]


def test_texts_are_nfc_normalised():
    decomposed = "e\u0301t\u00e9"  # "été" with the first é decomposed
    assert unicodedata.normalize("NFC", decomposed) != decomposed
    c = ParallelCorpus.from_dict("nfc", ["a", "b"], {"en": ["summer", "x"], "fr": [decomposed, "y"]})
    assert c.text("fr", 0) == "\u00e9t\u00e9"
    assert c.dataset["fr"][0] == "\u00e9t\u00e9"


def test_constructor_wraps_dataset_and_drops_extra_columns():
    ds = datasets.Dataset.from_dict({"de": ["a", "b"], "uid": ["x", "y"], "en": ["A", "B"], "note": ["n", "m"]})
    c = ParallelCorpus("wrapped", ds, ["en", "de"])
    assert c.languages == ("en", "de")
    assert c.dataset.column_names == ["uid", "en", "de"]
    assert c.texts("de") == ["a", "b"]


def test_constructor_honours_dataset_indices_mapping():
    ds = datasets.Dataset.from_dict({"uid": ["a", "b", "c"], "en": ["A", "B", "C"], "fr": ["á", "b́", "ć"]})
    c = ParallelCorpus("sel", ds.select([2, 0]), ["en", "fr"])
    assert c.unit_ids == ("c", "a")
    assert c.texts("en") == ["C", "A"]


def test_duplicate_unit_id_names_it():
    with pytest.raises(CorpusError, match=r"duplicate unit id 'u2'.*rows 1 and 3"):
        small(uids=["u1", "u2", "u3", "u2", "u5", "u6"])


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_names_unit_and_language(bad):
    texts = {**TEXTS, "fr": ["un", "deux", bad, "quatre", "cinq", "six"]}
    with pytest.raises(CorpusError, match=r"unit 'u3', language 'fr'.*empty"):
        small(texts=texts)


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_non_str_text_names_unit_and_language(bad):
    texts = {**TEXTS, "id": ["satu", "dua", "tiga", "empat", bad, "enam"]}
    with pytest.raises(CorpusError, match=r"unit 'u5', language 'id'.*not str"):
        small(texts=texts)


def test_non_str_text_in_dataset_names_unit_and_language():
    ds = datasets.Dataset.from_dict({"uid": ["a", "b"], "en": ["A", "B"], "fr": [1, 2]})
    with pytest.raises(CorpusError, match=r"unit 'a', language 'fr'"):
        ParallelCorpus("ints", ds, ["en", "fr"])


def test_missing_language_column_names_it():
    ds = datasets.Dataset.from_dict({"uid": ["a", "b"], "en": ["A", "B"], "fr": ["a", "b"]})
    with pytest.raises(CorpusError, match=r"language column 'de' missing"):
        ParallelCorpus("missing", ds, ["en", "de"])


def test_missing_uid_column():
    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "en": ["A", "B"], "fr": ["a", "b"]})
    with pytest.raises(CorpusError, match=r"no 'uid' column"):
        ParallelCorpus("noid", ds, ["en", "fr"])


def test_unequal_counts_names_language():
    texts = {**TEXTS, "fr": TEXTS["fr"][:4]}
    with pytest.raises(CorpusError, match=r"unequal counts: language 'fr' has 4 texts but there are 6"):
        small(texts=texts)


def test_needs_two_languages_and_two_units():
    with pytest.raises(CorpusError, match="at least 2 languages"):
        small(texts={"en": TEXTS["en"]})
    with pytest.raises(CorpusError, match="at least 2 units"):
        ParallelCorpus.from_dict("one", ["u1"], {"en": ["a"], "fr": ["b"]})


def test_bad_unit_id_and_duplicate_language():
    with pytest.raises(CorpusError, match=r"unit id at row 1"):
        small(uids=["u1", "", "u3", "u4", "u5", "u6"])
    with pytest.raises(CorpusError, match=r"listed twice.*'en'"):
        ParallelCorpus("dup", small().dataset, ["en", "fr", "en"])
    with pytest.raises(CorpusError, match="unit-id column"):
        ParallelCorpus("uidlang", small().dataset, ["en", "uid"])


def test_select_languages_units_and_max_units():
    c = small()
    s = c.select(languages=["id", "en"])
    assert s.languages == ("id", "en") and s.unit_ids == c.unit_ids
    assert s.texts("en") == TEXTS["en"]
    s = c.select(units=slice(1, 5, 2))
    assert s.unit_ids == ("u2", "u4") and s.texts("fr") == ["deux", "quatre"]
    s = c.select(units=[5, 0, 2])
    assert s.unit_ids == ("u6", "u1", "u3") and s.texts("id") == ["enam", "satu", "tiga"]
    s = c.select(max_units=4)
    assert s.unit_ids == tuple(UIDS[:4])
    assert s.name == c.name


def test_select_errors():
    c = small()
    with pytest.raises(CorpusError, match="no language 'de'"):
        c.select(languages=["en", "de"])
    with pytest.raises(CorpusError, match="out of range"):
        c.select(units=[0, 6])
    with pytest.raises(CorpusError, match="max_units"):
        c.select(max_units=0)
    with pytest.raises(CorpusError, match="duplicate unit id"):
        c.select(units=[0, 0, 1])


def test_split_first_units_when_no_seed():
    sel, held = small().split(2)
    assert sel.unit_ids == ("u1", "u2")
    assert held.unit_ids == ("u3", "u4", "u5", "u6")
    assert held.texts("fr") == TEXTS["fr"][2:]


def test_split_seeded_is_deterministic_and_seed_dependent():
    uids = [f"u{i}" for i in range(40)]
    c = ParallelCorpus.from_dict("big", uids, {"en": [f"e{i}" for i in uids], "fr": [f"f{i}" for i in uids]})
    a1, h1 = c.split(10, seed=7)
    a2, h2 = c.split(10, seed=7)
    assert a1.fingerprint() == a2.fingerprint() and h1.fingerprint() == h2.fingerprint()
    b, _ = c.split(10, seed=8)
    assert b.unit_ids != a1.unit_ids
    assert a1.unit_ids != c.unit_ids[:10]  # shuffled, not a prefix (P(prefix) = 1/C(40,10))


@settings(max_examples=40, deadline=None)
@given(S=st.integers(4, 30), data=st.data())
def test_split_is_a_disjoint_partition_in_corpus_order(S, data):
    n = data.draw(st.integers(2, S - 2))
    seed = data.draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
    uids = [f"u{i:02d}" for i in range(S)]
    c = ParallelCorpus.from_dict("p", uids, {"en": [f"e{i}" for i in uids], "fr": [f"f{i}" for i in uids]})
    sel, held = c.split(n, seed=seed)
    assert (sel.S, held.S) == (n, S - n)
    assert not set(sel.unit_ids) & set(held.unit_ids)
    assert set(sel.unit_ids) | set(held.unit_ids) == set(uids)
    for part in (sel, held):
        assert list(part.unit_ids) == sorted(part.unit_ids)  # corpus order kept
        assert part.texts("fr") == [f"f{u}" for u in part.unit_ids]  # rows stay aligned


def test_split_bad_sizes():
    with pytest.raises(CorpusError, match="at least 2 units on each side"):
        small().split(5)
    with pytest.raises(CorpusError, match="at least 2 units on each side"):
        small().split(1)


def test_fingerprint_ignores_name_and_tracks_content():
    base = small().fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert small(name="other").fingerprint() == base
    changed = {**TEXTS, "fr": ["un", "deux", "trois", "quatre", "cinq", "sept"]}
    assert small(texts=changed).fingerprint() != base
    assert small(uids=["u1", "u2", "u3", "u4", "u5", "u7"]).fingerprint() != base
    assert small().select(languages=["fr", "en", "id"]).fingerprint() != base
    # Field boundaries are unambiguous: moving a character between cells changes the hash.
    a = ParallelCorpus.from_dict("x", ["a", "b"], {"en": ["ab", "c"], "fr": ["d", "e"]})
    b = ParallelCorpus.from_dict("x", ["a", "b"], {"en": ["a", "bc"], "fr": ["d", "e"]})
    assert a.fingerprint() != b.fingerprint()


def test_fingerprint_same_for_nfc_equivalent_input():
    a = ParallelCorpus.from_dict("x", ["a", "b"], {"en": ["cafe\u0301", "b"], "fr": ["c", "d"]})
    b = ParallelCorpus.from_dict("x", ["a", "b"], {"en": ["caf\u00e9", "b"], "fr": ["c", "d"]})
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_stable_across_processes():
    code = (
        "from lingua_ray.corpus import ParallelCorpus;"
        f"print(ParallelCorpus.from_dict('p', {UIDS!r}, {TEXTS!r}).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == small().fingerprint()


def test_to_jsonl_writes_one_object_per_unit(tmp_path):
    import json

    path = small().to_jsonl(tmp_path / "c.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["uid"] for r in rows] == UIDS
    assert [r["id"] for r in rows] == TEXTS["id"]


def test_pickles_for_ray_workers():
    import pickle

    c = small()
    back = pickle.loads(pickle.dumps(c))
    assert back.fingerprint() == c.fingerprint() and back.texts("id") == TEXTS["id"]
