"""`jsonl` source: a local file, one unit per line: ``{"uid": "...", "<lang>": "text", ...}``.

The id key is ``uid``, not ``id``, because ``id`` is the code of Indonesian. Blank lines
are skipped; keys for languages not requested are ignored. Every error names ``file:line``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import UID, CorpusError, ParallelCorpus
from .config import CorpusConfig
from .registry import register_source


def read_jsonl(path: str | Path, languages: list[str]) -> ParallelCorpus:
    """Corpus of `languages` (in that order) from the jsonl file at `path`."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"jsonl: cannot read {path}: {e}") from None
    rows: list[tuple[int, dict]] = []
    present: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise CorpusError(f"{where}: invalid JSON: {e}") from None
        if not isinstance(row, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if UID not in row:
            raise CorpusError(f"{where}: no {UID!r} key (the unit id key is 'uid'; 'id' is Indonesian)")
        present.update(row)
        rows.append((n, row))
    absent = [l for l in languages if l not in present]
    if absent:
        have = sorted(present - {UID})
        raise CorpusError(f"jsonl: unknown language(s) {absent}: no line of {path} has them; languages present: {have}")
    uids: list[str] = []
    texts: dict[str, list[str]] = {l: [] for l in languages}
    first_line: dict[str, int] = {}
    for n, row in rows:
        where = f"{path}:{n}"
        uid = row[UID]
        if not isinstance(uid, str) or not uid.strip():
            raise CorpusError(f"{where}: {UID!r} is {uid!r}, not a non-empty str")
        if uid in first_line:
            raise CorpusError(f"{where}: duplicate unit id {uid!r} (first at line {first_line[uid]})")
        first_line[uid] = n
        for lang in languages:
            if lang not in row:
                raise CorpusError(f"{where}: unit {uid!r} has no text for language {lang!r}")
            text = row[lang]
            if not isinstance(text, str):
                raise CorpusError(f"{where}: unit {uid!r}, language {lang!r}: text is {type(text).__name__}, not str")
            if not text.strip():
                raise CorpusError(f"{where}: unit {uid!r}, language {lang!r}: text is empty or whitespace only")
            texts[lang].append(text)
        uids.append(uid)
    return ParallelCorpus.from_dict(f"jsonl:{path.name}", uids, texts)


@register_source("jsonl")
def load_jsonl(cfg: CorpusConfig) -> ParallelCorpus:
    if not cfg.path:
        raise CorpusError("jsonl source needs path= (a file with one JSON object per line)")
    return read_jsonl(cfg.path, list(cfg.languages))
