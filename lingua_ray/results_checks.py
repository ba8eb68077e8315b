"""results.json below the models: ResultsError, plain-JSON conversion, cross-field checks, error paths.

``normalize_results`` turns numpy values, tuples, str-Enums and models into plain JSON values.
``check_against_grid`` runs as the ``Results`` model's last validator: shapes that depend on
the grid (K, S, L, F, R, the languages) and what the numbers imply (contrasts, sums, log
ratios, specificity). ``fail`` raises from inside any validator with a path relative to the
model being validated; ``locate`` and ``message_for`` turn a pydantic error into the
``checkpoints[0].per_layer.lrds[3].ci``-style path and a one-line message of ResultsError.
"""

from __future__ import annotations

import json
import math
import types
from enum import Enum
from numbers import Integral, Real
from typing import Annotated, Any, NoReturn, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lingua_ray.specificity import specificity_table

# Tolerance of the consistency checks: loose enough for values computed in float32.
ATOL = 1e-5
_ERROR = "lingua_ray_results"


class ResultsError(ValueError):
    """A results dict or file that breaks the schema; ``path`` locates the bad field."""

    def __init__(self, path: str, message: str):
        self.path = path or "<root>"
        self.message = message
        super().__init__(f"{self.path}: {message}")


# ---------------------------------------------------------------- conversion to plain JSON


def normalize_results(d: Any, *, nan_to_null: bool = False, _path: str = "") -> Any:
    """A deep copy made of dict/list/str/int/float/bool/None only.

    A ``Results`` model (or any model below it) becomes its dict (an optional section it does
    not have stays absent). Numpy scalars and arrays
    (anything with ``tolist``), tuples and str-Enums become plain values and lists. With
    ``nan_to_null`` non-finite floats become None (what ``write_results`` stores).
    """
    if isinstance(d, BaseModel):
        d = _dump(d)
    if d is None or isinstance(d, bool):
        return d
    if isinstance(d, str):
        return d.value if isinstance(d, Enum) else d  # a str-Enum from the config: its value
    if isinstance(d, Integral):
        return int(d)
    if isinstance(d, Real):
        x = float(d)
        return None if nan_to_null and not math.isfinite(x) else x
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            if not isinstance(k, str):
                raise ResultsError(_path, f"dict key {k!r} is not a string")
            out[k] = normalize_results(v, nan_to_null=nan_to_null, _path=f"{_path}.{k}" if _path else k)
        return out
    if isinstance(d, (list, tuple)):
        return [normalize_results(v, nan_to_null=nan_to_null, _path=f"{_path}[{i}]") for i, v in enumerate(d)]
    if hasattr(d, "tolist"):
        return normalize_results(d.tolist(), nan_to_null=nan_to_null, _path=_path)
    raise ResultsError(_path, f"value of type {type(d).__name__} is not JSON-able")


def _dump(m: BaseModel) -> dict:
    """A model's dict, without the optional fields (``_doc_optional``) it leaves unset, at any depth:
    absent stays absent."""
    out = m.model_dump()
    _strip_unset(m, out)
    return out


def _strip_unset(m: BaseModel, out: dict) -> None:
    for name, f in type(m).model_fields.items():
        v = getattr(m, name)
        if v is None and not f.is_required():
            out.pop(name, None)
        elif isinstance(v, BaseModel):
            _strip_unset(v, out[name])
        elif isinstance(v, list):
            for x, o in zip(v, out[name]):
                if isinstance(x, BaseModel):
                    _strip_unset(x, o)
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, BaseModel):
                    _strip_unset(x, out[name][k])


def plain_value(v: Any) -> Any:
    """normalize_results for one field value handed to a model, leaving nested models alone."""
    if isinstance(v, BaseModel) or v is None or isinstance(v, (bool, str)) and not isinstance(v, Enum):
        return v
    if isinstance(v, (list, tuple)):
        return [plain_value(x) for x in v]
    if isinstance(v, dict):
        return {k: plain_value(x) for k, x in v.items()}
    try:
        return normalize_results(v)
    except ResultsError:
        return v  # not JSON-able: the field's own type check names it


def results_error(model: type[BaseModel], e: ValidationError) -> ResultsError:
    """The first error pydantic found validating ``model``, as ResultsError(path, message)."""
    err = e.errors(include_url=False)[0]
    path, leaf = locate(model, err["loc"])
    return ResultsError(*message_for(err, path, leaf))


def fail(path: str, message: str) -> NoReturn:
    """Raise from a validator: ``path`` is relative to the model or field being validated."""
    # "where" only shows in pydantic's own message (a model built directly); ResultsError uses path.
    where = f"{path}: " if path else ""
    raise PydanticCustomError(_ERROR, "{where}{message}", {"path": path, "message": message, "where": where})


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key(path: str, key: str) -> str:
    # Data keys (language codes) are quoted: they come from user config and may hold dots.
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


# ---------------------------------------------------------------- pydantic errors → paths


def _unwrap(tp: Any) -> tuple[Any, list, bool]:
    """(bare type, constraint metadata, nullable) of an annotation, through Annotated/Optional."""
    meta, nullable = [], False
    while True:
        if get_origin(tp) is Annotated:
            args = get_args(tp)
            tp = args[0]
            for m in args[1:]:
                meta += m.metadata if isinstance(m, FieldInfo) else [m]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            nullable = True
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return tp, meta, nullable


def locate(model: type[BaseModel], loc: tuple) -> tuple[str, tuple[Any, list, bool]]:
    """The ResultsError path of a pydantic ``loc`` and the unwrapped annotation found there."""
    tp, path = model, ""
    for part in loc:
        tp, _, _ = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            f = tp.model_fields[part]
            tp = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            path = _field(path, part)
        elif get_origin(tp) is list and isinstance(part, int):
            tp, path = get_args(tp)[0], f"{path}[{part}]"
        elif get_origin(tp) is dict and isinstance(part, str):
            tp, path = get_args(tp)[1], _key(path, part)
        else:  # inside a free-form value (run.config): no more types to follow
            tp, path = Any, (f"{path}[{part}]" if isinstance(part, int) else _field(path, str(part)))
    return path, _unwrap(tp)  # a field's own Field(...) constraints were folded into its annotation above


def _interval(meta: list) -> str:
    lo = next((("[", m.ge) for m in meta if isinstance(m, at.Ge)), None) or \
        next((("(", m.gt) for m in meta if isinstance(m, at.Gt)), ("(", "-inf"))
    hi = next(((m.le, "]") for m in meta if isinstance(m, at.Le)), None) or \
        next(((m.lt, ")") for m in meta if isinstance(m, at.Lt)), ("inf", ")"))
    return f"{lo[0]}{lo[1]}, {hi[0]}{hi[1]}"


def message_for(err: dict, path: str, leaf: tuple[Any, list, bool]) -> tuple[str, str]:
    """(path, one-line message) of one pydantic error located at ``path``."""
    kind, x, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    _, meta, nullable = leaf
    null = " or null" if nullable else ""
    if kind == _ERROR:
        rel = ctx["path"]
        return (path + rel if rel.startswith("[") else _field(path, rel) if rel else path), ctx["message"]
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return path, f"expected an integer{null}, got {x!r}"
    if kind in ("float_type", "float_parsing"):
        return path, f"expected a number{null}, got {x!r}"
    if kind in ("string_type", "string_too_short"):
        return path, f"expected a non-empty string{null}, got {x!r}"
    if kind == "finite_number":
        return path, f"is {x} but a finite number is required here"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return path, f"{x} is outside {_interval(meta)}"
    if kind in ("too_short", "too_long"):
        if ctx.get("actual_length") == 0:
            return path, "is empty"
        lo = next((m.min_length for m in meta if isinstance(m, at.MinLen)), None)
        hi = next((m.max_length for m in meta if isinstance(m, at.MaxLen)), None)
        want = lo if lo == hi else f"at least {lo}" if kind == "too_short" else f"at most {hi}"
        return path, f"has length {ctx.get('actual_length')}, expected {want}"
    if kind == "literal_error":
        return path, f"{x!r} is not {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return path, f"{x!r} does not match {ctx['pattern']}"
    if kind in ("list_type", "dict_type", "model_type", "model_attributes_type"):
        return path, f"expected {'a list' if kind == 'list_type' else 'an object'}{null}, got {type(x).__name__}"
    if kind == "missing":
        return path, "missing required key"
    if kind == "extra_forbidden":
        return path, "unknown key"
    return path, err["msg"]


# ---------------------------------------------------------------- checks across fields


def close(a: float, b: float) -> bool:
    return abs(a - b) <= ATOL * max(1.0, abs(a), abs(b))


def contrast(m: list[list[float]]) -> float:
    """Mean of the diagonal minus mean of the off-diagonal (the LRDS/SADS formula)."""
    n = len(m)
    diag = sum(m[i][i] for i in range(n)) / n
    off = sum(m[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return diag - off


def _length(x: list, path: str, n: int, what: str) -> None:
    if len(x) != n:
        fail(path, f"has length {len(x)}, expected {what}")


def _keys(x: dict, path: str, expected: list[str], what: str) -> None:
    missing = [k for k in expected if k not in x]
    if missing:
        fail(_key(path, missing[0]), f"missing ({what}: {', '.join(expected)})")
    extra = [k for k in x if k not in expected]
    if extra:
        fail(_key(path, extra[0]), f"not one of the {what} ({', '.join(expected)})")


def check_against_grid(res: Any) -> None:
    """Every check of a ``Results`` that needs more than one field; ``fail`` on the first miss."""
    grid = res.grid
    _length(res.checkpoints, "checkpoints", len(grid.checkpoints), "one per grid.checkpoints")
    for i, (cp, ref) in enumerate(zip(res.checkpoints, grid.checkpoints)):
        _check_checkpoint(cp, f"checkpoints[{i}]", grid, ref)
    if res.ablation is not None:
        _check_ablation(res.ablation, "ablation", grid)


def _check_checkpoint(cp: Any, path: str, grid: Any, ref: Any) -> None:
    for k in ("label", "revision", "step"):
        if getattr(cp, k) != getattr(ref, k):
            fail(f"{path}.{k}", f"is {getattr(cp, k)!r} but grid.checkpoints has {getattr(ref, k)!r} at this position")
    K, S, L, F = len(grid.languages), grid.n_units, grid.n_layers, grid.n_neurons
    pl = cp.per_layer
    for m in ("lrds", "sads", "norm_share"):
        _length(getattr(pl, m), f"{path}.per_layer.{m}", L, f"n_layers = {L}")
    if abs(sum(pl.norm_share) - 1.0) > 1e-6:
        fail(f"{path}.per_layer.norm_share", f"sums to {sum(pl.norm_share)!r}, not 1")
    for name, n, what in (("language_block_means", K, f"K = {K} languages"), ("meaning_block_means", S, f"S = {S} units")):
        M = getattr(cp, name)
        _length(M, f"{path}.{name}", n, what)
        for i, row in enumerate(M):
            _length(row, f"{path}.{name}[{i}]", n, what)
    for m, name in (("lrds", "language_block_means"), ("sads", "meaning_block_means")):
        got, want = getattr(cp.overall, m).value, contrast(getattr(cp, name))
        if not close(got, want):
            fail(f"{path}.overall.{m}.value", f"is {got!r} but the contrast of {name} is {want!r}")
    _check_key_neurons(cp.key_neurons, f"{path}.key_neurons", grid.languages, L, F)


def _check_key_neurons(kn: Any, path: str, langs: list[str], L: int, F: int) -> None:
    _keys(kn.counts, f"{path}.counts", langs, "languages")
    _keys(kn.total, f"{path}.total", langs, "languages")
    for lang in langs:
        cpath, c = _key(f"{path}.counts", lang), kn.counts[lang]
        _length(c, cpath, L, f"n_layers = {L}")
        for i, x in enumerate(c):
            if x > F:
                fail(f"{cpath}[{i}]", f"{x} is outside [0, {F}] (n_neurons = {F})")
        if kn.total[lang] != sum(c):
            fail(_key(f"{path}.total", lang), f"is {kn.total[lang]} but the per-layer counts sum to {sum(c)}")
    K, ov = len(langs), kn.overlap
    _length(ov, f"{path}.overlap", K, f"K = {K} languages")
    for i, row in enumerate(ov):
        _length(row, f"{path}.overlap[{i}]", K, f"K = {K}")
    for i in range(K):
        if ov[i][i] != kn.total[langs[i]]:
            fail(f"{path}.overlap[{i}][{i}]", f"is {ov[i][i]} but total[{langs[i]!r}] is {kn.total[langs[i]]}")
        for j in range(K):
            if ov[i][j] != ov[j][i]:
                fail(f"{path}.overlap[{i}][{j}]", f"is {ov[i][j]} but overlap[{j}][{i}] is {ov[j][i]}")
            if ov[i][j] > min(ov[i][i], ov[j][j]):
                fail(f"{path}.overlap[{i}][{j}]", f"{ov[i][j]} exceeds a language's total")


def _check_ablation(ab: Any, path: str, grid: Any) -> None:
    labels = [r.label for r in grid.checkpoints]
    seen: set[str] = set()
    for ci, cp in enumerate(ab.checkpoints):
        cpath = f"{path}.checkpoints[{ci}]"
        if cp.label not in labels or cp.label in seen:
            fail(f"{cpath}.label", f"{cp.label!r} is not a grid checkpoint label or repeats")
        seen.add(cp.label)
        rows = [r.model_dump() for r in cp.rows]
        _check_rows(rows, f"{cpath}.rows", grid.languages, cp.eval_languages, ab.n_random)
        want = specificity_table(rows, cp.eval_languages)
        _keys(cp.specificity, f"{cpath}.specificity", list(want),
              "languages with a key mask and PPL in that language")
        for lang, fields in cp.specificity.items():
            spath = _key(f"{cpath}.specificity", lang)
            for k, expected in want[lang].items():
                got, expected = getattr(fields, k), (None if math.isnan(expected) else expected)
                if (got is None) != (expected is None) or (got is not None and not close(got, expected)):
                    fail(f"{spath}.{k}", f"is {got!r} but the rows give {expected!r}")


def _check_rows(rows: list[dict], path: str, langs: list[str], ev: list[str], R: int) -> None:
    intact = None
    key_counts: dict[str, int] = {}
    seen = set()
    for i, row in enumerate(rows):
        rp = f"{path}[{i}]"
        kind, _, lang = row["mask"].partition(":")
        lang = lang if kind != "none" else None
        if lang is not None and lang not in langs:
            fail(f"{rp}.mask", f"language {lang!r} is not in grid.languages")
        if row["language"] != lang:
            fail(f"{rp}.language", f"is {row['language']!r} but the mask names {lang!r}")
        rep = row["repeat"]
        if kind == "random":
            if R == 0:
                fail(f"{rp}.repeat", "random row but ablation.n_random is 0")
            if rep is None or rep > R - 1:
                fail(f"{rp}.repeat", f"{rep} is outside [0, {R - 1}] (ablation.n_random = {R})")
        elif rep is not None:
            fail(f"{rp}.repeat", f"must be null for a {kind!r} mask")
        if (row["mask"], rep) in seen:
            fail(rp, f"duplicate row for mask {row['mask']!r} repeat {rep}")
        seen.add((row["mask"], rep))
        n = row["n_neurons"]
        if kind == "none" and n != 0:
            fail(f"{rp}.n_neurons", "the intact model masks 0 neurons")
        if kind == "key":
            key_counts[lang] = n
        _keys(row["ppl"], f"{rp}.ppl", ev, "eval_languages")
        _keys(row["log_ppl_ratio"], f"{rp}.log_ppl_ratio", ev, "eval_languages")
        if kind == "none":
            intact = row
    if intact is None:
        fail(path, "no 'none' row (the intact baseline)")
    for i, row in enumerate(rows):
        rp = f"{path}[{i}]"
        for e in ev:
            want = math.log(row["ppl"][e] / intact["ppl"][e])
            if not close(row["log_ppl_ratio"][e], want):
                fail(_key(f"{rp}.log_ppl_ratio", e), f"is {row['log_ppl_ratio'][e]!r} but log(ppl / intact ppl) is {want!r}")
        lang = row["language"]
        if row["mask"].startswith("random:"):
            if lang not in key_counts:
                fail(f"{rp}.mask", f"random control for {lang!r} without a key:{lang} row")
            if row["n_neurons"] != key_counts[lang]:
                fail(f"{rp}.n_neurons", f"is {row['n_neurons']} but the key:{lang} mask has "
                     f"{key_counts[lang]}; the random control matches the count")
    for lang in key_counts:
        reps = sorted(r["repeat"] for r in rows if r["mask"] == f"random:{lang}")
        if reps != list(range(R)):
            fail(path, f"random:{lang} has repeats {reps}, expected 0..{R - 1} (ablation.n_random = {R})")
