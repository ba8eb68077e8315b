import json
import re

import pytest

from lingua_ray.corpus import CorpusConfig, CorpusError, ParallelCorpus, load_corpus
from lingua_ray.corpus.testing import CorpusSourceConformance

ROWS = [
    {"uid": f"s{i}", "en": f"sentence {i}", "fr": f"phrase {i}", "id": f"kalimat {i}", "de": f"Satz {i}"}
    for i in range(8)
]
ROWS[3]["fr"] = "e\u0301te\u0301 3"  # decomposed accents: the corpus must hold them NFC


def write(path, rows, raw_lines=()):
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


class TestJsonlConformance(CorpusSourceConformance):
    source = "jsonl"
    languages = ("id", "en", "fr")
    max_units = 3

    @pytest.fixture
    def make_config(self, tmp_path):
        path = write(tmp_path / "corpus.jsonl", ROWS)
        return lambda **kw: CorpusConfig(source="jsonl", path=str(path), **kw)


def load(path, languages=("en", "fr")):
    return load_corpus(CorpusConfig(source="jsonl", path=str(path), languages=list(languages)))


def test_reads_rows_in_file_order_and_ignores_unrequested_keys(tmp_path):
    c = load(write(tmp_path / "c.jsonl", ROWS, raw_lines=["", "   "]), ["de", "en"])
    assert c.unit_ids == tuple(r["uid"] for r in ROWS)
    assert c.texts("de") == [r["de"] for r in ROWS]
    assert c.name == "jsonl:c.jsonl"


def test_round_trip_through_to_jsonl(tmp_path):
    c = ParallelCorpus.from_dict("rt", ["a", "b", "c"], {"en": ["x", "y", "z"], "zh": ["甲", "乙", "丙"]})
    back = load(c.to_jsonl(tmp_path / "rt.jsonl"), ["en", "zh"])
    assert back.fingerprint() == c.fingerprint()


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", ROWS[:2], raw_lines=['{"uid": "x", "en": "a", "fr": '])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: invalid JSON"):
        load(path)


def test_non_object_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "arr.jsonl", ROWS[:1], raw_lines=['["uid", "en"]'])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:2: expected a JSON object"):
        load(path)


def test_missing_uid_names_line_and_explains_id(tmp_path):
    path = write(tmp_path / "noid.jsonl", [*ROWS[:2], {"id": "kalimat", "en": "a", "fr": "b"}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: no 'uid' key.*Indonesian"):
        load(path)


def test_duplicate_uid_names_both_lines(tmp_path):
    path = write(tmp_path / "dup.jsonl", [*ROWS[:3], {**ROWS[1]}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:4: duplicate unit id 's1' \(first at line 2\)"):
        load(path)


def test_empty_text_names_line_unit_and_language(tmp_path):
    path = write(tmp_path / "empty.jsonl", [*ROWS[:2], {**ROWS[2], "fr": "  "}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: unit 's2', language 'fr'.*empty"):
        load(path)


def test_missing_text_for_one_unit_names_it(tmp_path):
    row = {k: v for k, v in ROWS[4].items() if k != "en"}
    path = write(tmp_path / "gap.jsonl", [*ROWS[:2], row])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: unit 's4' has no text for language 'en'"):
        load(path)


def test_non_str_text_names_line(tmp_path):
    path = write(tmp_path / "num.jsonl", [*ROWS[:2], {**ROWS[2], "en": 42}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: unit 's2', language 'en'.*int"):
        load(path)


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="needs path="):
        load_corpus(CorpusConfig(source="jsonl", languages=["en", "fr"]))
    with pytest.raises(CorpusError, match="cannot read"):
        load(tmp_path / "nope.jsonl")
