"""The ``criteria`` and ``alignment`` sections of results.json (schema version 3): models and checks.

Built by the reduce stage (lingua_ray/reduce_criteria.py) and, for ``criteria.ablation``, the
ablate stage. Each field's meaning is in its ``_doc`` (and so in docs/results.md); formulas are in
docs/criteria.md. ``check_criteria`` / ``check_alignment`` run as the ``Results`` model's last
validators: checkpoints are the grid's, every per-language dict has the grid's languages, every
per-layer list has L entries, totals are the sums of the counts, matrices are C × C or K × K.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import Field, model_validator

from lingua_ray.results_checks import _key, _keys, _length, fail
from lingua_ray.results_types import Count, Finite, NonEmptyStr, OptFloat, OptFraction, _doc, _Model

__all__ = ["Alignment", "AlignmentCheckpoint", "AlignmentScope", "CriteriaBase", "CriteriaCheckpoint",
           "CriterionCounts", "CriterionOverlap", "CriterionStability", "MetricCI",
           "check_alignment", "check_criteria"]

Jmatrix = list[list[OptFraction]]


class CriterionCounts(_Model):
    """One criterion's sets on one checkpoint (``criteria.checkpoints[i].criteria[name]``)."""

    counts: dict[str, list[Count]] = _doc("per language, length L: neurons in that language's set in each layer",
                                          "neurons")
    total: dict[str, Count] = _doc("per language: Σ over layers of `counts[language]`", "neurons")
    n_neurons: Count = _doc("(layer, neuron) pairs in at least one language's set (LAPE and LNA may assign "
                            "one neuron to several languages)", "neurons")
    info: dict[str, Any] = _doc("what the criterion chose besides the mask: LAPE's `filter_value`, "
                                "`activation_bar`, `n_selected`, `n_dropped`; LNA's `lam`, `m`, `sweep`; "
                                "empty for zscore and average_precision")


class CriterionOverlap(_Model):
    """Jaccard |A ∧ B| / |A ∨ B| between every two criteria's sets; null where both sets are empty."""

    overall: Jmatrix = _doc("C × C over all (language, layer, neuron) triples, rows and columns `criteria.names`",
                            "fraction")
    per_language: dict[str, Jmatrix] = _doc("per language: C × C over its (layer, neuron) pairs", "fraction")
    per_layer: list[Jmatrix] = _doc("length L: C × C over the layer's (language, neuron) pairs", "fraction")


class CriteriaCheckpoint(_Model):
    """Every criterion on one checkpoint (``criteria.checkpoints[i]``)."""

    label: NonEmptyStr = _doc("must equal `grid.checkpoints[i].label`")
    criteria: dict[str, CriterionCounts] = _doc("one per name of `criteria.names`")
    overlap: CriterionOverlap = _doc("pairwise Jaccard of the criteria's sets")


class CriterionStability(_Model):
    """Jaccard of one criterion's sets between consecutive checkpoints c−1 and c (C−1 values)."""

    overall: list[OptFraction] = _doc("length C−1: over all (language, layer, neuron)", "fraction")
    per_language: dict[str, list[OptFraction]] = _doc("per language, length C−1", "fraction")
    per_layer: list[list[OptFraction]] = _doc("L rows, each length C−1", "fraction")


class CriteriaBase(_Model):
    """Key-neuron criteria side by side on the same activations (``criteria``; docs/criteria.md).
    results.Criteria adds ``ablation`` (it needs the ablation models)."""

    names: Annotated[list[NonEmptyStr], Field(min_length=1)] = _doc(
        "the criteria of `reduce.criteria`, in order; each one's mask is `mask_<name>` in the store")
    settings: dict[str, dict[str, Any]] = _doc("per criterion: the settings it ran with (stored beside its mask)")
    sources: dict[str, NonEmptyStr] = _doc("per criterion: the paper and code it follows")
    checkpoints: list[CriteriaCheckpoint] = _doc("one per checkpoint, in grid order")
    stability: Optional[dict[str, CriterionStability]] = _doc(
        "per criterion: consecutive-checkpoint Jaccard; null with one checkpoint")


class MetricCI(_Model):
    """One alignment summary: its value on all units and its unit-bootstrap interval."""

    value: OptFloat = _doc("the summary on all S units (null if undefined, e.g. CKA of identical units)",
                           "fraction (CKA: similarity in [0, 1])")
    ci: Optional[Annotated[list[Finite], Field(min_length=2, max_length=2)]] = _doc(
        "[lo, hi] percentile interval over bootstrap draws of units at `settings.ci_level`; null without "
        "bootstrap, and always for CKA (not a mean over units)", "fraction")

    @model_validator(mode="after")
    def _ordered(self) -> "MetricCI":
        if self.ci is not None and self.ci[0] > self.ci[1]:
            fail("ci", f"lo {self.ci[0]} > hi {self.ci[1]}")
        return self


class AlignmentScope(_Model):
    """Alignment metrics on one scope: one layer's `a[layer]`, or all layers concatenated (v)."""

    retrieval: MetricCI = _doc("translation retrieval top-1 accuracy, mean over ordered pairs l ≠ m", "fraction")
    mexa: MetricCI = _doc("MEXA strict (row and column maximum), mean over pairs l ≠ m", "fraction")
    bridge: MetricCI = _doc("ILO bridge: share of units whose k neighbours hold ≥ t other languages, mean over "
                            "languages", "fraction")
    reach: MetricCI = _doc("ILO reach: share of the other languages reached, mean over languages", "fraction")
    ilo: MetricCI = _doc("harmonic mean of bridge and reach per language, mean over languages", "fraction")
    cka: MetricCI = _doc("linear CKA, mean over pairs l ≠ m (no interval)", "similarity")
    retrieval_pairs: list[list[OptFloat]] = _doc("K × K: retrieval l → m; null diagonal", "fraction")
    mexa_pairs: list[list[OptFloat]] = _doc("K × K, symmetric; null diagonal", "fraction")
    cka_pairs: list[list[OptFloat]] = _doc("K × K, symmetric, diagonal 1 (null if undefined)", "similarity")
    bridge_per_language: list[Finite] = _doc("length K", "fraction")
    reach_per_language: list[Finite] = _doc("length K", "fraction")
    ilo_per_language: list[Finite] = _doc("length K", "fraction")


class AlignmentCheckpoint(_Model):
    """Alignment of one checkpoint (``alignment.checkpoints[i]``)."""

    label: NonEmptyStr = _doc("must equal `grid.checkpoints[i].label`")
    overall: AlignmentScope = _doc("all layers concatenated (METHOD.md's v)")
    per_layer: list[AlignmentScope] = _doc("length L: each layer alone")


class Alignment(_Model):
    """Alignment metrics beside LRDS and SADS (``alignment``; docs/criteria.md)."""

    knn_k: Annotated[int, Field(ge=1)] = _doc("ILO's k: neighbours per unit over all languages pooled", "units")
    bridge_threshold: Annotated[int, Field(ge=1)] = _doc("ILO's t: other languages a unit's neighbours must hold "
                                                         "to bridge", "languages")
    checkpoints: list[AlignmentCheckpoint] = _doc("one per checkpoint, in grid order")


# ---------------------------------------------------------------- cross-field checks


def _labels(items: list, path: str, grid: Any) -> None:
    want = [c.label for c in grid.checkpoints]
    got = [c.label for c in items]
    if got != want:
        fail(path, f"labels {got} must be the grid's checkpoints {want}")


def _square(M: list, n: int, path: str, what: str) -> None:
    _length(M, path, n, what)
    for i, row in enumerate(M):
        _length(row, f"{path}[{i}]", n, what)


def check_criteria(cr: Any, path: str, res: Any) -> None:
    grid = res.grid
    langs, L, C = grid.languages, grid.n_layers, len(cr.names)
    if len(set(cr.names)) != C:
        fail(f"{path}.names", f"repeats a criterion: {cr.names}")
    _keys(cr.settings, f"{path}.settings", cr.names, "criteria.names")
    _keys(cr.sources, f"{path}.sources", cr.names, "criteria.names")
    _labels(cr.checkpoints, f"{path}.checkpoints", grid)
    for i, cp in enumerate(cr.checkpoints):
        p = f"{path}.checkpoints[{i}]"
        _keys(cp.criteria, f"{p}.criteria", cr.names, "criteria.names")
        for name, cc in cp.criteria.items():
            q = _key(f"{p}.criteria", name)
            _keys(cc.counts, f"{q}.counts", langs, "grid.languages")
            _keys(cc.total, f"{q}.total", langs, "grid.languages")
            for lang in langs:
                _length(cc.counts[lang], _key(f"{q}.counts", lang), L, "grid.n_layers")
                if any(n > grid.n_neurons for n in cc.counts[lang]):
                    fail(_key(f"{q}.counts", lang), f"a layer count exceeds F = {grid.n_neurons}")
                if cc.total[lang] != sum(cc.counts[lang]):
                    fail(_key(f"{q}.total", lang), f"{cc.total[lang]} != Σ counts = {sum(cc.counts[lang])}")
            if cc.n_neurons > min(L * grid.n_neurons, sum(cc.total.values())):
                fail(f"{q}.n_neurons", f"{cc.n_neurons} exceeds the sets' sizes")
        _square(cp.overlap.overall, C, f"{p}.overlap.overall", "len(criteria.names)")
        _keys(cp.overlap.per_language, f"{p}.overlap.per_language", langs, "grid.languages")
        for lang, M in cp.overlap.per_language.items():
            _square(M, C, _key(f"{p}.overlap.per_language", lang), "len(criteria.names)")
        _length(cp.overlap.per_layer, f"{p}.overlap.per_layer", L, "grid.n_layers")
        for j, M in enumerate(cp.overlap.per_layer):
            _square(M, C, f"{p}.overlap.per_layer[{j}]", "len(criteria.names)")
    n_ck = len(grid.checkpoints)
    if (cr.stability is None) != (n_ck < 2):
        fail(f"{path}.stability", "must be null exactly when the grid has one checkpoint")
    if cr.stability is not None:
        _keys(cr.stability, f"{path}.stability", cr.names, "criteria.names")
        for name, st in cr.stability.items():
            q = _key(f"{path}.stability", name)
            _length(st.overall, f"{q}.overall", n_ck - 1, "checkpoints − 1")
            _keys(st.per_language, f"{q}.per_language", langs, "grid.languages")
            _length(st.per_layer, f"{q}.per_layer", L, "grid.n_layers")
    if cr.ablation is not None:
        from lingua_ray.results_checks import _check_ablation

        for name, ab in cr.ablation.items():
            if name not in cr.names:
                fail(_key(f"{path}.ablation", name), f"is not among criteria.names {cr.names}")
            _check_ablation(ab, _key(f"{path}.ablation", name), grid)


def check_alignment(al: Alignment, path: str, res: Any) -> None:
    grid = res.grid
    K, L = len(grid.languages), grid.n_layers
    _labels(al.checkpoints, f"{path}.checkpoints", grid)
    for i, cp in enumerate(al.checkpoints):
        p = f"{path}.checkpoints[{i}]"
        _length(cp.per_layer, f"{p}.per_layer", L, "grid.n_layers")
        for q, scope in [(f"{p}.overall", cp.overall)] + [(f"{p}.per_layer[{j}]", s)
                                                          for j, s in enumerate(cp.per_layer)]:
            for name in ("retrieval_pairs", "mexa_pairs", "cka_pairs"):
                _square(getattr(scope, name), K, f"{q}.{name}", "K")
            for name in ("bridge_per_language", "reach_per_language", "ilo_per_language"):
                _length(getattr(scope, name), f"{q}.{name}", K, "K")
