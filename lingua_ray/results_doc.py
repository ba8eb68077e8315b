"""The field tables of docs/results.md, generated from the JSON schema of lingua_ray.results.Results.

Each model gets one block in the page, between ``<!-- results-schema: Name -->`` and
``<!-- /results-schema -->``: a heading, the model's docstring and a table of its fields
(field, type, meaning, unit). The type column is rendered from the schema (bounds, lengths,
nullability; "may be absent" for a field with a default that is not ``required``); meaning and
unit come from each field's ``_doc(...)`` in results.py or results_evolution.py. Prose
outside the blocks is hand-written and left alone.

    python -m lingua_ray.results_doc [docs/results.md]         # rewrite the blocks in place
    python -m lingua_ray.results_doc --check [docs/results.md] # exit 1 if a block is stale

tests/test_results_doc.py runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
BLOCK = re.compile(r"<!-- results-schema: (\w+) -->\n.*?<!-- /results-schema -->", re.S)


def schema() -> dict:
    from lingua_ray.results import Results

    return Results.model_json_schema()


def models(s: dict) -> dict[str, dict]:
    """Model name -> its schema object: the root (Results) and every $defs entry."""
    return {s["title"]: s, **s.get("$defs", {})}


def _num(x: Any) -> str:
    return str(x).replace("-", "−")


def _bounds(p: dict, base: str) -> str:
    lo = ("[", p["minimum"]) if "minimum" in p else ("(", p["exclusiveMinimum"]) if "exclusiveMinimum" in p else None
    hi = (p["maximum"], "]") if "maximum" in p else (p["exclusiveMaximum"], ")") if "exclusiveMaximum" in p else None
    if lo and hi:
        return f"{base} in {lo[0]}{_num(lo[1])}, {_num(hi[0])}{hi[1]}"
    if lo:
        return f"{base} {'≥' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{base} {'≤' if hi[1] == ']' else '<'} {_num(hi[0])}"
    return base


def type_text(p: dict) -> str:
    """A schema property as the type column writes it, e.g. ``list of float ≥ 0`` or ``int ≥ 0 or null``."""
    if "$ref" in p:
        name = p["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in p:
        parts = [type_text(q) for q in p["anyOf"] if q.get("type") != "null"]
        parts = [f"({t})" if ", " in t else t for t in parts]  # "(list of float, length 2) or null"
        nullable = any(q.get("type") == "null" for q in p["anyOf"])
        return " or ".join(parts) + (" or null" if nullable else "")
    if "const" in p:  # a one-value Literal
        return f"`{json.dumps(p['const'], ensure_ascii=False)}`"
    if "enum" in p:
        return " or ".join(f'`"{v}"`' for v in p["enum"])
    t = p.get("type")
    if t == "integer":
        return _bounds(p, "int")
    if t == "number":
        return _bounds(p, "float")
    if t == "string":
        base = "non-empty str" if p.get("minLength") == 1 else "str"
        return f"{base} matching `{p['pattern']}`" if "pattern" in p else base
    if t == "array":
        items = type_text(p.get("items", {}))
        n_min, n_max = p.get("minItems"), p.get("maxItems")
        size = (f", length {n_min}" if n_min is not None and n_min == n_max
                else ", non-empty" if n_min == 1 else f", ≥ {n_min} items" if n_min is not None else "")
        return f"list of {items}{size}"
    if t == "object":
        extra = p.get("additionalProperties")
        return f"{{str: {type_text(extra)}}}" if isinstance(extra, dict) else "object"
    return "any"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_block(name: str, m: dict) -> str:
    """The generated markdown of one model: marker, heading, docstring, field table, end marker."""
    doc = " ".join(m.get("description", "").split()).replace("``", "`")
    rows = ["| field | type | meaning | unit |", "|---|---|---|---|"]
    required = set(m.get("required", m["properties"]))
    for field, p in m["properties"].items():
        optional = field not in required and "default" in p  # pydantic: a field declared with a default
        t = type_text(p) + (", may be absent" if optional else "")
        rows.append(f"| `{field}` | {_cell(t)} | {_cell(p.get('description', ''))} | "
                    f"{_cell(p.get('unit', '—'))} |")
    body = "\n".join(rows)
    return f"<!-- results-schema: {name} -->\n## {name}\n\n{doc}\n\n{body}\n<!-- /results-schema -->"


def update(text: str, s: dict | None = None) -> str:
    """``text`` with every block regenerated. Raises ValueError naming models with no block or
    blocks with no model, so a new model cannot go undocumented."""
    ms = models(schema() if s is None else s)
    found = BLOCK.findall(text)
    missing = [n for n in ms if n not in found]
    unknown = [n for n in found if n not in ms]
    repeated = sorted({n for n in found if found.count(n) > 1})
    if missing or unknown or repeated:
        raise ValueError(f"docs/results.md blocks out of step with the models: missing {missing}, "
                         f"unknown {unknown}, repeated {repeated}; add or remove "
                         "'<!-- results-schema: Name -->...<!-- /results-schema -->' blocks")
    return BLOCK.sub(lambda mt: render_block(mt.group(1), ms[mt.group(1)]), text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0]) if paths else DEFAULT_DOC
    text = path.read_text(encoding="utf-8")
    new = update(text)
    if check:
        if new != text:
            print(f"{path} is stale: run python -m lingua_ray.results_doc {path}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        from lingua_ray import atomic

        atomic.write_text(path, new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
