"""`ParallelCorpus`: K languages × S aligned units, each unit with a stable string id.

A corpus is the (l, s) part of the METHOD.md grid: row s holds the same meaning in every
language. It wraps a `datasets.Dataset` with a str column ``uid`` and one str column per
language code, in the order given. Every text is NFC-normalised and validated on
construction, so downstream code (tokenisation, capture, metrics) never sees an empty
cell, a duplicate id or a ragged row.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

UID = "uid"


class CorpusError(ValueError):
    """Bad corpus input; the message names the unit id, language and/or file at fault."""


class CorpusSourceUnavailable(CorpusError):
    """A source cannot be reached here (no npm executable, hub unreachable); the message names alternatives."""


def check_languages(languages: Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(languages, str):
        raise CorpusError(f"{where}: languages must be a sequence of codes, not the string {languages!r}")
    langs = tuple(languages)
    for lang in langs:
        if not isinstance(lang, str) or not lang.strip():
            raise CorpusError(f"{where}: language code {lang!r} is not a non-empty str")
        if lang == UID:
            raise CorpusError(f"{where}: {UID!r} is the unit-id column and cannot be a language code")
    seen: set[str] = set()
    dups = [lang for lang in langs if lang in seen or seen.add(lang)]
    if dups:
        raise CorpusError(f"{where}: language(s) listed twice: {sorted(set(dups))}")
    if len(langs) < 2:
        raise CorpusError(f"{where}: a parallel corpus needs at least 2 languages, got {list(langs)}")
    return langs


def _validate(
    name: str, uids: Sequence[Any], texts: Mapping[str, Sequence[Any]]
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Check ids and texts; return them with every text NFC-normalised.

    Raises `CorpusError` naming the unit id and language of the first bad cell.
    """
    where = f"corpus {name!r}"
    S = len(uids)
    for lang, col in texts.items():
        if len(col) != S:
            raise CorpusError(
                f"{where}: unequal counts: language {lang!r} has {len(col)} texts but there are {S} unit ids"
            )
    if S < 2:
        raise CorpusError(f"{where}: a parallel corpus needs at least 2 units, got {S}")
    first_row: dict[str, int] = {}
    for i, uid in enumerate(uids):
        if not isinstance(uid, str) or not uid.strip():
            raise CorpusError(f"{where}: unit id at row {i} is {uid!r}, not a non-empty str")
        if uid in first_row:
            raise CorpusError(f"{where}: duplicate unit id {uid!r} at rows {first_row[uid]} and {i}")
        first_row[uid] = i
    out: dict[str, tuple[str, ...]] = {}
    for lang, col in texts.items():
        norm = []
        for uid, text in zip(uids, col, strict=True):
            if not isinstance(text, str):
                raise CorpusError(
                    f"{where}: unit {uid!r}, language {lang!r}: text is {type(text).__name__} {text!r}, not str"
                )
            text = unicodedata.normalize("NFC", text)
            if not text.strip():
                raise CorpusError(f"{where}: unit {uid!r}, language {lang!r}: text is empty or whitespace only")
            norm.append(text)
        out[lang] = tuple(norm)
    return tuple(uids), out


class ParallelCorpus:
    """Languages × aligned units.

    ``texts(l)[s]`` is unit ``unit_ids[s]`` in language ``languages[l]``; the grid has
    ``K = len(languages)`` rows of ``S = len(unit_ids)`` cells. `name` is a label only: it
    is not part of `fingerprint()`.
    """

    def __init__(self, name: str, dataset: datasets.Dataset, languages: Sequence[str]):
        if not isinstance(name, str) or not name:
            raise CorpusError(f"corpus name must be a non-empty str, got {name!r}")
        if not isinstance(dataset, datasets.Dataset):
            raise CorpusError(f"corpus {name!r}: expected a datasets.Dataset, got {type(dataset).__name__}")
        langs = check_languages(languages, f"corpus {name!r}")
        cols = dataset.column_names
        if UID not in cols:
            raise CorpusError(f"corpus {name!r}: dataset has no {UID!r} column; columns: {cols}")
        for lang in langs:
            if lang not in cols:
                raise CorpusError(f"corpus {name!r}: language column {lang!r} missing; columns: {cols}")
        # The arrow view honours a select() indices mapping, unlike dataset.data.
        table = dataset.with_format("arrow")[:]
        raw_texts = {lang: table.column(lang).to_pylist() for lang in langs}
        uids, texts = _validate(name, table.column(UID).to_pylist(), raw_texts)
        self._name = name
        self._languages = langs
        self._uids = uids
        self._texts = texts
        self._index = {uid: i for i, uid in enumerate(uids)}
        self._fingerprint: str | None = None
        unchanged = cols == [UID, *langs] and all(list(texts[l]) == raw_texts[l] for l in langs)
        self._dataset = dataset if unchanged else self._to_dataset(uids, texts)

    @staticmethod
    def _to_dataset(uids: Sequence[str], texts: Mapping[str, Sequence[str]]) -> datasets.Dataset:
        features = datasets.Features({UID: datasets.Value("string"), **{l: datasets.Value("string") for l in texts}})
        columns = {UID: list(uids), **{l: list(t) for l, t in texts.items()}}
        return datasets.Dataset.from_dict(columns, features=features)

    @classmethod
    def from_dict(cls, name: str, uids: Sequence[str], texts: Mapping[str, Sequence[str]]) -> ParallelCorpus:
        """Build from ``uids`` (length S) and ``texts[lang]`` (length S each, aligned with uids)."""
        langs = check_languages(list(texts), f"corpus {name!r}")
        uids, norm = _validate(name, list(uids), {l: list(texts[l]) for l in langs})
        return cls(name, cls._to_dataset(uids, norm), langs)

    # --- read access -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def dataset(self) -> datasets.Dataset:
        """Columns ``uid`` then one per language, in `languages` order; S rows."""
        return self._dataset

    @property
    def languages(self) -> tuple[str, ...]:
        return self._languages

    @property
    def unit_ids(self) -> tuple[str, ...]:
        return self._uids

    @property
    def K(self) -> int:
        """Number of languages."""
        return len(self._languages)

    @property
    def S(self) -> int:
        """Number of aligned units."""
        return len(self._uids)

    def __len__(self) -> int:
        return self.S

    def _lang(self, lang: str) -> str:
        if lang not in self._texts:
            raise CorpusError(f"corpus {self._name!r} has no language {lang!r}; languages: {list(self._languages)}")
        return lang

    def texts(self, lang: str) -> list[str]:
        """The S texts of `lang`, aligned with `unit_ids`."""
        return list(self._texts[self._lang(lang)])

    def text(self, lang: str, i: int) -> str:
        """Text of unit index `i` (0 ≤ i < S, negative counts from the end) in `lang`."""
        return self._texts[self._lang(lang)][self._check_index(i)]

    def index(self, uid: str) -> int:
        """Position of unit id `uid` in `unit_ids`."""
        try:
            return self._index[uid]
        except KeyError:
            raise CorpusError(f"corpus {self._name!r} has no unit id {uid!r}") from None

    def _check_index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise CorpusError(f"corpus {self._name!r}: unit index must be an int, got {i!r}")
        if not -self.S <= i < self.S:
            raise CorpusError(f"corpus {self._name!r}: unit index {i} out of range for S={self.S}")
        return int(i) % self.S

    def __repr__(self) -> str:
        return f"ParallelCorpus(name={self._name!r}, K={self.K}, S={self.S}, languages={list(self._languages)})"

    # --- derived corpora ---------------------------------------------------------------

    def select(
        self,
        languages: Sequence[str] | None = None,
        units: slice | Sequence[int] | None = None,
        max_units: int | None = None,
        name: str | None = None,
    ) -> ParallelCorpus:
        """Sub-corpus: `languages` in the order given, `units` (a slice or int positions, in
        the order given), then at most the first `max_units` of those."""
        langs = self._languages if languages is None else check_languages(languages, f"select on {self._name!r}")
        for lang in langs:
            self._lang(lang)
        if units is None:
            idx = list(range(self.S))
        elif isinstance(units, slice):
            idx = list(range(self.S)[units])
        else:
            idx = [self._check_index(i) for i in units]
        if max_units is not None:
            if isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 1:
                raise CorpusError(f"select on {self._name!r}: max_units must be a positive int, got {max_units!r}")
            idx = idx[:max_units]
        return ParallelCorpus.from_dict(
            name or self._name,
            [self._uids[i] for i in idx],
            {l: [self._texts[l][i] for i in idx] for l in langs},
        )

    def split(self, n_select: int, seed: int | None = None) -> tuple[ParallelCorpus, ParallelCorpus]:
        """Disjoint (selection, held-out) partition of the units.

        The selection has `n_select` units: the first ones when `seed` is None, else a
        seeded uniform draw. Both parts keep the corpus order. Used so that held-out
        perplexity text never overlaps the units that picked the key neurons.
        """
        if isinstance(n_select, bool) or not isinstance(n_select, int) or not 2 <= n_select <= self.S - 2:
            raise CorpusError(
                f"split of {self._name!r}: n_select={n_select!r} must leave at least 2 units on each side (S={self.S})"
            )
        if seed is None:
            chosen = set(range(n_select))
        else:
            chosen = set(np.random.default_rng(seed).permutation(self.S)[:n_select].tolist())
        sel = [i for i in range(self.S) if i in chosen]
        rest = [i for i in range(self.S) if i not in chosen]
        return (
            self.select(units=sel, name=f"{self._name}[select]"),
            self.select(units=rest, name=f"{self._name}[heldout]"),
        )

    # --- identity and export -----------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 hex digest of (languages in order, unit ids, NFC texts); `name` excluded.

        Every string is length-prefixed so that no two different corpora hash the same
        byte stream; stable across processes (no Python `hash`).
        """
        if self._fingerprint is None:
            h = hashlib.sha256(b"lingua_ray.ParallelCorpus/v1\0")

            def put(s: str) -> None:
                b = s.encode("utf-8")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)

            h.update(self.K.to_bytes(8, "little") + self.S.to_bytes(8, "little"))
            for lang in self._languages:
                put(lang)
            for uid in self._uids:
                put(uid)
            for lang in self._languages:
                for text in self._texts[lang]:
                    put(text)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one ``{"uid": ..., "<lang>": text, ...}`` object per line (the `jsonl` source format)."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            for s, uid in enumerate(self._uids):
                row = {UID: uid, **{l: self._texts[l][s] for l in self._languages}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path
