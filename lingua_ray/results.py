"""results.json (schema version 1): its schema, validation, writing and reading.

The lead fills a plain dict from the reducers; this module checks it against the schema
below and writes it as ``results.json`` plus flat CSV tables. It knows no models, Ray or Zarr.
The field-by-field documentation (type, meaning, unit) is ``docs/results.md``.

JSON has no NaN. A non-finite float is accepted only in a *nullable* field, where it means
"undefined" and is written as ``null``; in a required field it is an error naming its path.
Numpy scalars and arrays and tuples are accepted and written as plain JSON numbers and lists.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import tempfile
from datetime import datetime, timedelta
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, TypedDict

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
CSV_FILES = ("scores_overall.csv", "scores_per_layer.csv", "key_neuron_counts.csv")
ABLATION_CSV_FILES = ("ablation_ppl.csv", "ablation_specificity.csv")

# Tolerances for cross-field consistency checks: loose enough for values computed in float32.
_ATOL = 1e-5


class Stat(TypedDict):
    value: float  # point estimate on all units
    ci: list[float] | None  # [lo, hi] bootstrap interval at settings.ci_level
    p_value: float | None  # permutation p-value


class RunInfo(TypedDict):
    name: str
    created_utc: str
    store: str
    config: dict[str, Any]
    model_fingerprint: str
    corpus_fingerprint: str
    lingua_ray_version: str


class CheckpointRef(TypedDict):
    label: str
    revision: str | None
    step: int | None


class Grid(TypedDict):
    languages: list[str]  # K
    n_units: int  # S
    n_layers: int  # L
    n_neurons: int  # F
    checkpoints: list[CheckpointRef]


class Settings(TypedDict):
    tau: float | None
    key_mode: Literal["zscore", "top_fraction"]
    top_fraction: float | None
    n_boot: int
    n_perm: int
    seed: int
    ci_level: float


class ScorePair(TypedDict):
    lrds: Stat
    sads: Stat


class PerLayer(TypedDict):
    lrds: list[Stat]  # L
    sads: list[Stat]  # L
    norm_share: list[float]  # L, sums to 1


class KeyNeurons(TypedDict):
    counts: dict[str, list[int]]  # language -> L counts
    total: dict[str, int]
    overlap: list[list[int]]  # K x K, diagonal = total


class CheckpointResults(TypedDict):
    label: str
    revision: str | None
    step: int | None
    overall: ScorePair
    overall_balanced: ScorePair
    per_layer: PerLayer
    language_block_means: list[list[float]]  # B, K x K
    meaning_block_means: list[list[float]]  # D, S x S
    key_neurons: KeyNeurons


class AblationRow(TypedDict):
    mask: str  # "none" | "key:<lang>" | "random:<lang>"
    language: str | None
    repeat: int | None
    n_neurons: int
    ppl: dict[str, float]  # eval language -> perplexity
    log_ppl_ratio: dict[str, float]  # eval language -> log(ppl / ppl_intact)


class Specificity(TypedDict):
    own_log_ratio: float
    other_mean_log_ratio: float | None
    other_median_log_ratio: float | None
    specificity: float | None
    random_own_log_ratio_mean: float | None
    random_own_log_ratio_sd: float | None
    random_specificity_mean: float | None
    random_specificity_sd: float | None


class AblationCheckpoint(TypedDict):
    label: str
    eval_languages: list[str]
    rows: list[AblationRow]
    specificity: dict[str, Specificity]


class Ablation(TypedDict):
    eval_corpus: str
    n_eval_units: int
    n_random: int  # R
    seed: int
    checkpoints: list[AblationCheckpoint]


class Results(TypedDict):
    schema_version: int
    run: RunInfo
    grid: Grid
    settings: Settings
    checkpoints: list[CheckpointResults]
    ablation: Ablation | None


class ResultsError(ValueError):
    """A results dict or file that breaks the schema; ``path`` locates the bad field."""

    def __init__(self, path: str, message: str):
        self.path = path or "<root>"
        self.message = message
        super().__init__(f"{self.path}: {message}")


# ---------------------------------------------------------------- conversion to plain JSON


def normalize_results(d: Any, *, nan_to_null: bool = False, _path: str = "") -> Any:
    """A deep copy made of dict/list/str/int/float/bool/None only.

    Numpy scalars and arrays (anything with ``tolist``) and tuples become plain values and
    lists. With ``nan_to_null`` non-finite floats become None (what ``write_results`` stores).
    """
    if d is None or isinstance(d, (str, bool)):
        return d
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
            out[k] = normalize_results(v, nan_to_null=nan_to_null, _path=_field(_path, k))
        return out
    if isinstance(d, (list, tuple)):
        return [normalize_results(v, nan_to_null=nan_to_null, _path=f"{_path}[{i}]")
                for i, v in enumerate(d)]
    if hasattr(d, "tolist"):
        return normalize_results(d.tolist(), nan_to_null=nan_to_null, _path=_path)
    raise ResultsError(_path, f"value of type {type(d).__name__} is not JSON-able")


# ---------------------------------------------------------------- small typed checks


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key(path: str, key: str) -> str:
    # Data keys (language codes) are quoted: they come from user config and may hold dots.
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _obj(x: Any, path: str, required: tuple[str, ...]) -> dict:
    if not isinstance(x, dict):
        raise ResultsError(path, f"expected an object, got {type(x).__name__}")
    missing = [k for k in required if k not in x]
    if missing:
        raise ResultsError(_field(path, missing[0]), "missing required key")
    extra = sorted(set(x) - set(required))
    if extra:
        raise ResultsError(_field(path, extra[0]), f"unknown key (allowed: {', '.join(required)})")
    return x


def _range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _str(x: Any, path: str, *, nullable: bool = False) -> str | None:
    if x is None and nullable:
        return None
    if not isinstance(x, str) or not x:
        raise ResultsError(path, f"expected a non-empty string{' or null' if nullable else ''}, got {x!r}")
    return x


def _int(x: Any, path: str, *, lo: int | None = None, hi: int | None = None,
         nullable: bool = False) -> int | None:
    if x is None and nullable:
        return None
    if isinstance(x, bool) or not isinstance(x, Integral):
        raise ResultsError(path, f"expected an integer{' or null' if nullable else ''}, got {x!r}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ResultsError(path, f"{x} is outside {_range(lo, hi)}")
    return int(x)


def _float(x: Any, path: str, *, lo: float | None = None, hi: float | None = None,
           nullable: bool = False) -> float | None:
    if x is None and nullable:
        return None
    if isinstance(x, bool) or not isinstance(x, Real):
        raise ResultsError(path, f"expected a number{' or null' if nullable else ''}, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        if nullable:
            return None  # undefined; written as null
        raise ResultsError(path, f"is {x} but a finite number is required here")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ResultsError(path, f"{x} is outside {_range(lo, hi)}")
    return x


def _list(x: Any, path: str, n: int | None = None, what: str = "") -> list:
    if not isinstance(x, list):
        raise ResultsError(path, f"expected a list, got {type(x).__name__}")
    if n is not None and len(x) != n:
        raise ResultsError(path, f"has length {len(x)}, expected {what or n}")
    return x


def _matrix(x: Any, path: str, n: int, what: str, lo: float, hi: float) -> list[list[float]]:
    rows = _list(x, path, n, what)
    return [[_float(v, f"{path}[{i}][{j}]", lo=lo, hi=hi) for j, v in enumerate(_list(r, f"{path}[{i}]", n, what))]
            for i, r in enumerate(rows)]


def _keys(x: Any, path: str, expected: list[str], what: str) -> dict:
    if not isinstance(x, dict):
        raise ResultsError(path, f"expected an object keyed by {what}, got {type(x).__name__}")
    missing = [k for k in expected if k not in x]
    if missing:
        raise ResultsError(_key(path, missing[0]), f"missing ({what}: {', '.join(expected)})")
    extra = [k for k in x if k not in expected]
    if extra:
        raise ResultsError(_key(path, extra[0]), f"not one of the {what} ({', '.join(expected)})")
    return x


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _ATOL * max(1.0, abs(a), abs(b))


# ---------------------------------------------------------------- validation


def validate_results(d: Any) -> None:
    """Raise ResultsError naming the first field of ``d`` that breaks schema version 1.

    Besides types and shapes it checks what the numbers imply: checkpoint labels agree with
    the grid, ``norm_share`` sums to 1, the paper LRDS/SADS equal the contrasts of B and D,
    key-neuron totals and overlaps agree with the counts, log PPL ratios agree with the
    perplexities, and the specificity table agrees with the ablation rows.
    """
    d = normalize_results(d)
    _obj(d, "", ("schema_version", "run", "grid", "settings", "checkpoints", "ablation"))
    if _int(d["schema_version"], "schema_version") != SCHEMA_VERSION:
        raise ResultsError("schema_version", f"is {d['schema_version']!r}; this reader knows version {SCHEMA_VERSION}")
    _check_run(d["run"])
    grid = _check_grid(d["grid"])
    _check_settings(d["settings"])
    cps = _list(d["checkpoints"], "checkpoints", len(grid["checkpoints"]), "one per grid.checkpoints")
    for i, cp in enumerate(cps):
        _check_checkpoint(cp, f"checkpoints[{i}]", grid, grid["checkpoints"][i])
    if d["ablation"] is not None:
        _check_ablation(d["ablation"], "ablation", grid)


def _check_run(run: Any) -> None:
    _obj(run, "run", tuple(RunInfo.__annotations__))
    for k in ("name", "store", "model_fingerprint", "corpus_fingerprint", "lingua_ray_version", "created_utc"):
        _str(run[k], f"run.{k}")
    try:
        t = datetime.fromisoformat(run["created_utc"])
    except ValueError:
        raise ResultsError("run.created_utc", f"{run['created_utc']!r} is not ISO 8601") from None
    if t.utcoffset() != timedelta(0):
        raise ResultsError("run.created_utc", f"{run['created_utc']!r} must carry a UTC offset (Z or +00:00)")
    if not isinstance(run["config"], dict):
        raise ResultsError("run.config", f"expected an object, got {type(run['config']).__name__}")


def _check_ref(ref: Any, path: str) -> None:
    _obj(ref, path, ("label", "revision", "step"))
    _str(ref["label"], f"{path}.label")
    _str(ref["revision"], f"{path}.revision", nullable=True)
    _int(ref["step"], f"{path}.step", lo=0, nullable=True)


def _check_grid(g: Any) -> dict:
    _obj(g, "grid", tuple(Grid.__annotations__))
    langs = _list(g["languages"], "grid.languages")
    for i, lang in enumerate(langs):
        _str(lang, f"grid.languages[{i}]")
    if len(set(langs)) != len(langs):
        raise ResultsError("grid.languages", "language codes repeat")
    if len(langs) < 2:
        raise ResultsError("grid.languages", "LRDS needs at least 2 languages")
    _int(g["n_units"], "grid.n_units", lo=2)
    _int(g["n_layers"], "grid.n_layers", lo=1)
    _int(g["n_neurons"], "grid.n_neurons", lo=1)
    refs = _list(g["checkpoints"], "grid.checkpoints")
    if not refs:
        raise ResultsError("grid.checkpoints", "is empty")
    for i, ref in enumerate(refs):
        _check_ref(ref, f"grid.checkpoints[{i}]")
    labels = [r["label"] for r in refs]
    if len(set(labels)) != len(labels):
        raise ResultsError("grid.checkpoints", "checkpoint labels repeat")
    return g


def _check_settings(s: Any) -> None:
    _obj(s, "settings", tuple(Settings.__annotations__))
    if s["key_mode"] not in ("zscore", "top_fraction"):
        raise ResultsError("settings.key_mode", f"{s['key_mode']!r} is not 'zscore' or 'top_fraction'")
    tau = _float(s["tau"], "settings.tau", nullable=True)
    frac = _float(s["top_fraction"], "settings.top_fraction", nullable=True)
    if s["key_mode"] == "zscore" and tau is None:
        raise ResultsError("settings.tau", "key_mode 'zscore' needs a threshold tau")
    if s["key_mode"] == "top_fraction" and (frac is None or not 0 < frac <= 1):
        raise ResultsError("settings.top_fraction", f"key_mode 'top_fraction' needs 0 < top_fraction <= 1, got {frac}")
    _int(s["n_boot"], "settings.n_boot", lo=0)
    _int(s["n_perm"], "settings.n_perm", lo=0)
    _int(s["seed"], "settings.seed")
    ci = _float(s["ci_level"], "settings.ci_level")
    if not 0 < ci < 1:
        raise ResultsError("settings.ci_level", f"{ci} is not in (0, 1)")


def _check_stat(st: Any, path: str) -> float:
    _obj(st, path, ("value", "ci", "p_value"))
    v = _float(st["value"], f"{path}.value")
    if st["ci"] is not None:
        lo, hi = (_float(x, f"{path}.ci[{j}]") for j, x in enumerate(_list(st["ci"], f"{path}.ci", 2, "[lo, hi]")))
        if lo > hi:
            raise ResultsError(f"{path}.ci", f"lo {lo} > hi {hi}")
    _float(st["p_value"], f"{path}.p_value", lo=0.0, hi=1.0, nullable=True)
    return v


def _contrast(m: list[list[float]]) -> float:
    """mean of the diagonal minus mean of the off-diagonal (the LRDS/SADS formula)."""
    n = len(m)
    diag = sum(m[i][i] for i in range(n)) / n
    off = sum(m[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return diag - off


def _check_checkpoint(cp: Any, path: str, grid: dict, ref: dict) -> None:
    _obj(cp, path, tuple(CheckpointResults.__annotations__))
    for k in ("label", "revision", "step"):
        if cp[k] != ref[k]:
            raise ResultsError(f"{path}.{k}", f"is {cp[k]!r} but grid.checkpoints has {ref[k]!r} at this position")
    K, S, L, F = len(grid["languages"]), grid["n_units"], grid["n_layers"], grid["n_neurons"]
    paper = {}
    for part in ("overall", "overall_balanced"):
        _obj(cp[part], f"{path}.{part}", ("lrds", "sads"))
        paper[part] = {m: _check_stat(cp[part][m], f"{path}.{part}.{m}") for m in ("lrds", "sads")}
    pl = _obj(cp["per_layer"], f"{path}.per_layer", ("lrds", "sads", "norm_share"))
    for m in ("lrds", "sads"):
        for i, st in enumerate(_list(pl[m], f"{path}.per_layer.{m}", L, f"n_layers = {L}")):
            _check_stat(st, f"{path}.per_layer.{m}[{i}]")
    shares = [_float(x, f"{path}.per_layer.norm_share[{i}]", lo=0.0)
              for i, x in enumerate(_list(pl["norm_share"], f"{path}.per_layer.norm_share", L, f"n_layers = {L}"))]
    if abs(sum(shares) - 1.0) > 1e-6:
        raise ResultsError(f"{path}.per_layer.norm_share", f"sums to {sum(shares)!r}, not 1")
    eps = 1e-6  # cosine means may overshoot ±1 by rounding
    B = _matrix(cp["language_block_means"], f"{path}.language_block_means", K, f"K = {K} languages", -1 - eps, 1 + eps)
    D = _matrix(cp["meaning_block_means"], f"{path}.meaning_block_means", S, f"S = {S} units", -1 - eps, 1 + eps)
    for m, M, name in (("lrds", B, "language_block_means"), ("sads", D, "meaning_block_means")):
        if not _close(paper["overall"][m], _contrast(M)):
            raise ResultsError(f"{path}.overall.{m}.value",
                               f"is {paper['overall'][m]!r} but the contrast of {name} is {_contrast(M)!r}")
    _check_key_neurons(cp["key_neurons"], f"{path}.key_neurons", grid["languages"], L, F)


def _check_key_neurons(kn: Any, path: str, langs: list[str], L: int, F: int) -> None:
    _obj(kn, path, ("counts", "total", "overlap"))
    counts = _keys(kn["counts"], f"{path}.counts", langs, "languages")
    totals = _keys(kn["total"], f"{path}.total", langs, "languages")
    for lang in langs:
        cpath = _key(f"{path}.counts", lang)
        c = [_int(x, f"{cpath}[{i}]", lo=0, hi=F) for i, x in enumerate(_list(counts[lang], cpath, L, f"n_layers = {L}"))]
        t = _int(totals[lang], _key(f"{path}.total", lang), lo=0)
        if t != sum(c):
            raise ResultsError(_key(f"{path}.total", lang), f"is {t} but the per-layer counts sum to {sum(c)}")
    K = len(langs)
    ov = [[_int(v, f"{path}.overlap[{i}][{j}]", lo=0) for j, v in enumerate(_list(r, f"{path}.overlap[{i}]", K, f"K = {K}"))]
          for i, r in enumerate(_list(kn["overlap"], f"{path}.overlap", K, f"K = {K} languages"))]
    for i in range(K):
        if ov[i][i] != totals[langs[i]]:
            raise ResultsError(f"{path}.overlap[{i}][{i}]", f"is {ov[i][i]} but total[{langs[i]!r}] is {totals[langs[i]]}")
        for j in range(K):
            if ov[i][j] != ov[j][i]:
                raise ResultsError(f"{path}.overlap[{i}][{j}]", f"is {ov[i][j]} but overlap[{j}][{i}] is {ov[j][i]}")
            if ov[i][j] > min(ov[i][i], ov[j][j]):
                raise ResultsError(f"{path}.overlap[{i}][{j}]", f"{ov[i][j]} exceeds a language's total")


_MASK = re.compile(r"(none)|(key|random):(.+)", re.S)


def compute_specificity(rows: list[dict], eval_languages: list[str]) -> dict[str, dict[str, float | None]]:
    """The ``specificity`` table of one ablation checkpoint, derived from its rows.

    For language l with a ``key:l`` row and l among the eval languages: own = log_ppl_ratio[l],
    other = the ratios of the other eval languages (mean and median), specificity = own − mean
    other. The ``random:l`` rows give per-repeat own and specificity; their mean and sample
    standard deviation (ddof = 1). Undefined entries (one eval language, R < 1 or R < 2 for
    the sd) are None.
    """
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        lang = row["language"]
        if not row["mask"].startswith("key:") or lang not in eval_languages:
            continue
        own, other, spec = _own_other(row["log_ppl_ratio"], lang, eval_languages)
        rnd = [_own_other(r["log_ppl_ratio"], lang, eval_languages)
               for r in rows if r["mask"] == f"random:{lang}"]
        r_own = [o for o, _, _ in rnd]
        r_spec = [s for _, _, s in rnd if s is not None]
        out[lang] = {
            "own_log_ratio": own,
            "other_mean_log_ratio": statistics.fmean(other) if other else None,
            "other_median_log_ratio": statistics.median(other) if other else None,
            "specificity": spec,
            "random_own_log_ratio_mean": statistics.fmean(r_own) if r_own else None,
            "random_own_log_ratio_sd": statistics.stdev(r_own) if len(r_own) > 1 else None,
            "random_specificity_mean": statistics.fmean(r_spec) if r_spec else None,
            "random_specificity_sd": statistics.stdev(r_spec) if len(r_spec) > 1 else None,
        }
    return out


def _own_other(ratios: dict[str, float], lang: str, eval_languages: list[str]):
    own = ratios[lang]
    other = [ratios[e] for e in eval_languages if e != lang]
    return own, other, (own - statistics.fmean(other)) if other else None


def _check_ablation(ab: Any, path: str, grid: dict) -> None:
    _obj(ab, path, tuple(Ablation.__annotations__))
    _str(ab["eval_corpus"], f"{path}.eval_corpus")
    _int(ab["n_eval_units"], f"{path}.n_eval_units", lo=1)
    R = _int(ab["n_random"], f"{path}.n_random", lo=0)
    _int(ab["seed"], f"{path}.seed")
    labels = [r["label"] for r in grid["checkpoints"]]
    seen: set[str] = set()
    for ci, cp in enumerate(_list(ab["checkpoints"], f"{path}.checkpoints")):
        cpath = f"{path}.checkpoints[{ci}]"
        _obj(cp, cpath, tuple(AblationCheckpoint.__annotations__))
        if _str(cp["label"], f"{cpath}.label") not in labels or cp["label"] in seen:
            raise ResultsError(f"{cpath}.label", f"{cp['label']!r} is not a grid checkpoint label or repeats")
        seen.add(cp["label"])
        ev = _list(cp["eval_languages"], f"{cpath}.eval_languages")
        for i, e in enumerate(ev):
            _str(e, f"{cpath}.eval_languages[{i}]")
        if not ev or len(set(ev)) != len(ev):
            raise ResultsError(f"{cpath}.eval_languages", "is empty or repeats a language")
        rows = _list(cp["rows"], f"{cpath}.rows")
        _check_rows(rows, f"{cpath}.rows", grid["languages"], ev, R)
        want = compute_specificity(rows, ev)
        spec = _keys(cp["specificity"], f"{cpath}.specificity", list(want), "languages with a key mask and PPL in that language")
        for lang, fields in spec.items():
            spath = _key(f"{cpath}.specificity", lang)
            _obj(fields, spath, tuple(Specificity.__annotations__))
            for k, expected in want[lang].items():
                got = _float(fields[k], f"{spath}.{k}", nullable=k != "own_log_ratio")
                if (got is None) != (expected is None) or (got is not None and not _close(got, expected)):
                    raise ResultsError(f"{spath}.{k}", f"is {got!r} but the rows give {expected!r}")


def _check_rows(rows: list, path: str, langs: list[str], ev: list[str], R: int) -> None:
    intact = None
    key_counts: dict[str, int] = {}
    seen = set()
    for i, row in enumerate(rows):
        rp = f"{path}[{i}]"
        _obj(row, rp, tuple(AblationRow.__annotations__))
        m = _MASK.fullmatch(row["mask"]) if isinstance(row["mask"], str) else None
        if m is None:
            raise ResultsError(f"{rp}.mask", f"{row['mask']!r} is not 'none', 'key:<lang>' or 'random:<lang>'")
        kind, lang = ("none", None) if m.group(1) else (m.group(2), m.group(3))
        if lang is not None and lang not in langs:
            raise ResultsError(f"{rp}.mask", f"language {lang!r} is not in grid.languages")
        if row["language"] != lang:
            raise ResultsError(f"{rp}.language", f"is {row['language']!r} but the mask names {lang!r}")
        if kind == "random":
            if R == 0:
                raise ResultsError(f"{rp}.repeat", "random row but ablation.n_random is 0")
            rep = _int(row["repeat"], f"{rp}.repeat", lo=0, hi=R - 1)
        elif row["repeat"] is not None:
            raise ResultsError(f"{rp}.repeat", f"must be null for a {kind!r} mask")
        else:
            rep = None
        if (row["mask"], rep) in seen:
            raise ResultsError(rp, f"duplicate row for mask {row['mask']!r} repeat {rep}")
        seen.add((row["mask"], rep))
        n = _int(row["n_neurons"], f"{rp}.n_neurons", lo=0)
        if kind == "none" and n != 0:
            raise ResultsError(f"{rp}.n_neurons", "the intact model masks 0 neurons")
        if kind == "key":
            key_counts[lang] = n
        ppl = _keys(row["ppl"], f"{rp}.ppl", ev, "eval_languages")
        for e in ev:
            _float(ppl[e], _key(f"{rp}.ppl", e), lo=1.0)
        _keys(row["log_ppl_ratio"], f"{rp}.log_ppl_ratio", ev, "eval_languages")
        for e in ev:
            _float(row["log_ppl_ratio"][e], _key(f"{rp}.log_ppl_ratio", e))
        if kind == "none":
            intact = row
    if intact is None:
        raise ResultsError(path, "no 'none' row (the intact baseline)")
    for i, row in enumerate(rows):
        rp = f"{path}[{i}]"
        for e in ev:
            want = math.log(row["ppl"][e] / intact["ppl"][e])
            if not _close(row["log_ppl_ratio"][e], want):
                raise ResultsError(_key(f"{rp}.log_ppl_ratio", e),
                                   f"is {row['log_ppl_ratio'][e]!r} but log(ppl / intact ppl) is {want!r}")
        lang = row["language"]
        if row["mask"].startswith("random:"):
            if lang not in key_counts:
                raise ResultsError(f"{rp}.mask", f"random control for {lang!r} without a key:{lang} row")
            if row["n_neurons"] != key_counts[lang]:
                raise ResultsError(f"{rp}.n_neurons", f"is {row['n_neurons']} but the key:{lang} mask has "
                                   f"{key_counts[lang]}; the random control matches the count")
    for lang in key_counts:
        reps = sorted(r["repeat"] for r in rows if r["mask"] == f"random:{lang}")
        if reps != list(range(R)):
            raise ResultsError(path, f"random:{lang} has repeats {reps}, expected 0..{R - 1} (ablation.n_random = {R})")


# ---------------------------------------------------------------- writing and reading


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def csv_tables(d: dict) -> dict[str, str]:
    """The CSV tables of a validated, normalised results dict: file name -> text (nulls empty)."""
    overall, layers, counts = [], [], []
    for cp in d["checkpoints"]:
        lab, step = cp["label"], cp["step"]
        for part, definition in (("overall", "paper"), ("overall_balanced", "balanced")):
            for m in ("lrds", "sads"):
                st = cp[part][m]
                lo, hi = st["ci"] if st["ci"] is not None else (None, None)
                overall.append([lab, step, m, definition, st["value"], lo, hi, st["p_value"]])
        pl = cp["per_layer"]
        for i, share in enumerate(pl["norm_share"]):
            row = [lab, step, i]
            for m in ("lrds", "sads"):
                st = pl[m][i]
                row += [st["value"], *(st["ci"] if st["ci"] is not None else (None, None))]
            layers.append(row + [share])
        for lang, per_layer in cp["key_neurons"]["counts"].items():
            counts += [[lab, lang, i, c] for i, c in enumerate(per_layer)]
    out = {
        "scores_overall.csv": _csv(["checkpoint", "step", "metric", "definition", "value", "ci_lo", "ci_hi", "p_value"], overall),
        "scores_per_layer.csv": _csv(["checkpoint", "step", "layer", "lrds", "lrds_lo", "lrds_hi",
                                     "sads", "sads_lo", "sads_hi", "norm_share"], layers),
        "key_neuron_counts.csv": _csv(["checkpoint", "language", "layer", "count"], counts),
    }
    if d["ablation"] is not None:
        ppl, spec = [], []
        fields = list(Specificity.__annotations__)
        for cp in d["ablation"]["checkpoints"]:
            for r in cp["rows"]:
                ppl += [[cp["label"], r["mask"], r["language"], r["repeat"], r["n_neurons"], e, r["ppl"][e],
                         r["log_ppl_ratio"][e]] for e in cp["eval_languages"]]
            spec += [[cp["label"], lang] + [s[k] for k in fields] for lang, s in cp["specificity"].items()]
        out["ablation_ppl.csv"] = _csv(["checkpoint", "mask", "language", "repeat", "n_neurons", "eval_language",
                                        "ppl", "log_ppl_ratio"], ppl)
        out["ablation_specificity.csv"] = _csv(["checkpoint", "language"] + fields, spec)
    return out


def write_results(d: dict, out_dir: str | os.PathLike) -> Path:
    """Validate ``d`` and write ``out_dir/results.json`` plus the CSV tables; returns the JSON path.

    Every file is written atomically; results.json last, so its presence means the set is
    complete. Ablation CSVs left in ``out_dir`` by an earlier run are removed when ``d`` has
    no ablation, so the folder never mixes two runs. Non-finite floats (allowed only in
    nullable fields) are stored as null.
    """
    validate_results(d)
    plain = normalize_results(d, nan_to_null=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = csv_tables(plain)
    for name, text in tables.items():
        atomic_write_text(out / name, text)
    for name in ABLATION_CSV_FILES:
        if name not in tables and (out / name).exists():
            (out / name).unlink()
    path = out / RESULTS_FILE
    atomic_write_text(path, json.dumps(plain, indent=1, allow_nan=False, ensure_ascii=False) + "\n")
    return path


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (lingua_ray writes undefined numbers as null)")


def load_results(path: str | os.PathLike) -> dict:
    """Read and validate a results.json (``path`` may be the file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        d = json.loads(p.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, ValueError) as e:
        raise ResultsError("", f"cannot read {p}: {e}") from e
    try:
        validate_results(d)
    except ResultsError as e:
        raise ResultsError(e.path, f"{e.message} (in {p})") from None
    return d
