"""Specificity of a deactivation: own-language damage minus the mean damage to the others.

The one home of this arithmetic (METHOD.md, "Deactivation"): the ablation stage fills the
``specificity`` table of results.json with ``summarise_ablation``, the results validator
recomputes it with ``specificity_table`` and compares, and the report takes the per-mask
mean ± sd over random repeats from ``mask_means``. All values are natural-log perplexity
ratios r = log(ppl / ppl_intact) (nats). Undefined numbers are NaN, never None; results.json
stores them as null.

Pure numpy: no torch, no Ray, no Zarr.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

SPECIFICITY_FIELDS = (
    "own_log_ratio",
    "other_mean_log_ratio",
    "other_median_log_ratio",
    "specificity",
    "random_own_log_ratio_mean",
    "random_own_log_ratio_sd",
    "random_specificity_mean",
    "random_specificity_sd",
)


class AblationError(ValueError):
    """Bad ablation input (mask shape or dtype, languages, texts, rows) or an ablation that did not apply.

    Defined here, below ``lingua_ray.ablation`` (which re-exports it), so the pure summary can
    raise the same error the model-side code raises.
    """


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample sd with ddof = 1) of ``values``; NaN mean when empty, NaN sd below two values."""
    if not len(values):
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else math.nan)  # one draw has no spread


def summarise_ablation(rows: Sequence[Mapping], languages: Sequence[str], eval_languages: Sequence[str]) -> dict:
    """Per-language specificity from result rows (pure; no model).

    For language l, with r = log_ppl_ratio and O = eval languages other than l:
        own_log_ratio         = r_key:l[l]
        other_mean/median     = mean / median over m in O of r_key:l[m]
        specificity           = own − other_mean
        random_own_*          = mean, sd over repeats of r_random:l[l]
        random_specificity_*  = mean, sd over repeats of (r[l] − mean_O r[m])
    sd uses ddof=1 when R > 1, else NaN (one draw has no spread); with R = 0 the random statistics are NaN, and
    with no other eval language the "other" statistics and specificity are NaN.
    Log ratios, medians beside means: real effects are heavy-tailed.

    Returns {language: {field: float}} in the order of ``languages``, fields as SPECIFICITY_FIELDS.
    Raises AblationError when a language is not evaluated, lacks exactly one ``key:`` row, or
    repeats a random repeat index.
    """
    eval_languages = list(eval_languages)
    out = {}
    for lang in languages:
        if lang not in eval_languages:
            raise AblationError(f"key language {lang!r} is not among the eval languages {eval_languages}")
        others = [e for e in eval_languages if e != lang]
        key_rows = [r for r in rows if r["mask"] == f"key:{lang}"]
        if len(key_rows) != 1:
            raise AblationError(f"expected one 'key:{lang}' row, found {len(key_rows)}")
        random_rows = sorted((r for r in rows if r["mask"] == f"random:{lang}"), key=lambda r: r["repeat"])
        repeats = [r["repeat"] for r in random_rows]
        if len(set(repeats)) != len(repeats):
            raise AblationError(f"duplicate repeats {repeats} among 'random:{lang}' rows")

        def own_other(row):
            ratio = row["log_ppl_ratio"]
            other = [float(ratio[e]) for e in others]
            return float(ratio[lang]), other

        own, other = own_other(key_rows[0])
        other_mean = float(np.mean(other)) if other else math.nan
        rand_own, rand_spec = [], []
        for row in random_rows:
            o, oth = own_other(row)
            rand_own.append(o)
            rand_spec.append(o - float(np.mean(oth)) if oth else math.nan)
        rom, ros = mean_sd(rand_own)
        rsm, rss = mean_sd(rand_spec)
        out[lang] = {
            "own_log_ratio": own,
            "other_mean_log_ratio": other_mean,
            "other_median_log_ratio": float(np.median(other)) if other else math.nan,
            "specificity": own - other_mean,
            "random_own_log_ratio_mean": rom,
            "random_own_log_ratio_sd": ros,
            "random_specificity_mean": rsm,
            "random_specificity_sd": rss,
        }
    return out


def key_languages(rows: Sequence[Mapping], eval_languages: Sequence[str]) -> list[str]:
    """Languages that get a specificity entry: a ``key:<lang>`` row and <lang> evaluated, in row order."""
    out = []
    for r in rows:
        lang = r["language"]
        if r["mask"].startswith("key:") and lang in eval_languages and lang not in out:
            out.append(lang)
    return out


def specificity_table(rows: Sequence[Mapping], eval_languages: Sequence[str]) -> dict:
    """The ``specificity`` table results.json must hold for these rows (``summarise_ablation``
    over ``key_languages``); a key language without PPL in its own language has no entry."""
    return summarise_ablation(rows, key_languages(rows, eval_languages), eval_languages)


def mask_means(rows: Sequence[Mapping], eval_languages: Sequence[str],
               order: Sequence[str]) -> list[tuple[str, int, list[float], list[float]]]:
    """Per mask name in ``order`` that has rows: (mask, n rows, mean r per eval language, sd r per eval language).

    A random mask has R rows (one per repeat); its mean and sd (ddof = 1, NaN when R < 2) are
    over the repeats. Masks with a single row have their own r as mean and NaN sd.
    """
    by_mask: dict[str, list[Mapping]] = {}
    for r in rows:
        by_mask.setdefault(r["mask"], []).append(r)
    out = []
    for mask in order:
        group = by_mask.get(mask)
        if not group:
            continue
        stats = [mean_sd([float(r["log_ppl_ratio"][e]) for r in group]) for e in eval_languages]
        out.append((mask, len(group), [m for m, _ in stats], [s for _, s in stats]))
    return out
