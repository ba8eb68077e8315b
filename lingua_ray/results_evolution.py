"""The ``evolution`` section of results.json (schema version 2): its models and cross-field checks.

Built by ``lingua_ray.evolution.summarise``; the meaning of each field is in its ``_doc`` (and so
in docs/results.md). ``check_evolution`` runs as the ``Results`` model's last validator: the
section's checkpoints are the grid's, its matrices agree with the per-checkpoint entries, the
edge shares agree with the key counts, and every Jaccard overlap is possible given the counts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from lingua_ray.evolution import INTERVAL, edge_k, edge_layers
from lingua_ray.results_checks import _key, _keys, _length, close, fail
from lingua_ray.results_types import COS_DIFF, Count, Finite, Fraction, NonEmptyStr, OptFraction, PValue, _doc
from lingua_ray.results_types import _Model

__all__ = ["ShareStat", "EdgeShare", "Evolution", "check_evolution", "check_identical_checkpoints"]


class ShareStat(_Model):
    """Key neurons in one set of layers (the first k, the last k, or both ends) of one checkpoint."""

    count: Count = _doc("key neurons in these layers", "neurons")
    share: OptFraction = _doc("`count` / `n_key`; null when `n_key` = 0", "fraction")
    uniform: Annotated[Finite, Field(gt=0, le=1)] = _doc(
        "the share if key neurons were spread evenly over the layers: (layers in this set) / L", "fraction")
    ci: Optional[Annotated[list[Fraction], Field(min_length=2, max_length=2)]] = _doc(
        "[lo, hi] Wilson score interval of `share` at `evolution.ci_level`, each key neuron one binomial draw "
        "of a layer; null when `n_key` = 0", "fraction")
    p_value: PValue = _doc("exact two-sided binomial test of `share` = `uniform`; null when `n_key` = 0",
                           "probability")

    @model_validator(mode="after")
    def _ordered_ci(self) -> "ShareStat":
        if self.ci is not None and self.ci[0] > self.ci[1]:
            fail("ci", f"lo {self.ci[0]} > hi {self.ci[1]}")
        return self


class EdgeShare(_Model):
    """Where one checkpoint's key neurons sit: the first and last `evolution.k` layers against the rest."""

    n_key: Count = _doc("key neurons in all L layers", "neurons")
    first: ShareStat = _doc("layers 0 … k−1 (uniform share k / L)")
    last: ShareStat = _doc("layers L−k … L−1 (uniform share k / L)")
    ends: ShareStat = _doc("the first and last layers together (uniform share 2k / L when L > 2)")


Matrix = list[list[Finite]]
Jaccards = Optional[dict[str, list[OptFraction]]]


class Evolution(_Model):
    """How the measurements move across checkpoints (``evolution``): the paper's claims (c) and (d).

    Columns c = 0..C−1 of every matrix are the checkpoints in grid order; rows are layers.
    """

    checkpoints: list[NonEmptyStr] = _doc("equal to the `grid.checkpoints` labels, in order: the columns of every "
                                          "L × C matrix below")
    k_requested: Annotated[int, Field(ge=1)] = _doc("layers at each end asked for (config)", "layers")
    k: Annotated[int, Field(ge=1)] = _doc("layers at each end used: min(`k_requested`, ⌊(L−1)/2⌋), at least 1, "
                                          "so the two ends never overlap and leave a middle when L ≥ 3", "layers")
    interval: Literal["wilson"] = _doc("how every share `ci` was computed (Wilson score interval for a binomial "
                                       "proportion; reflects the number of key neurons, not the sampling of units)")
    ci_level: Annotated[Finite, Field(gt=0, lt=1)] = _doc("coverage of every share `ci`", "fraction")
    per_layer_lrds: Matrix = _doc("L × C: `checkpoints[c].per_layer.lrds[layer].value`", COS_DIFF)
    per_layer_sads: Matrix = _doc("L × C: `checkpoints[c].per_layer.sads[layer].value`", COS_DIFF)
    key_counts: dict[str, list[list[Count]]] = _doc(
        "per language, L × C: `checkpoints[c].key_neurons.counts[language][layer]`", "neurons")
    edge_share: dict[str, list[EdgeShare]] = _doc("per language, length C: where its key neurons sit")
    edge_share_pooled: list[EdgeShare] = _doc(
        "length C: all languages together, a neuron counted once for each language it is key for")
    jaccard: Jaccards = _doc(
        "per language, length C−1: |A ∩ B| / |A ∪ B| of the key sets (layer, neuron) of checkpoints c and "
        "c+1; an entry is null when both sets are empty; null when the key masks were not available", "fraction")
    jaccard_chance: Jaccards = _doc(
        "the same shape: the overlap random sets with the same per-layer sizes would have, E|A∩B| / E|A∪B| "
        "with E|A∩B| = Σ_layer a·b / F; null with `jaccard`", "fraction")


# ---------------------------------------------------------------- checks across fields


def _matrix(M: list, path: str, L: int, C: int) -> None:
    _length(M, path, L, f"n_layers = {L} rows")
    for i, row in enumerate(M):
        _length(row, f"{path}[{i}]", C, f"one per checkpoint ({C})")


def check_evolution(ev: Any, path: str, res: Any) -> None:
    """Every check of the ``evolution`` section against the rest of ``res`` (a Results); ``fail`` on a miss."""
    grid, cps = res.grid, res.checkpoints
    labels = [r.label for r in grid.checkpoints]
    langs, L, C = list(grid.languages), grid.n_layers, len(labels)
    if ev.checkpoints != labels:
        fail(f"{path}.checkpoints", f"is {ev.checkpoints} but grid.checkpoints has {labels}")
    if ev.k != edge_k(ev.k_requested, L):
        fail(f"{path}.k", f"is {ev.k} but k_requested = {ev.k_requested} with L = {L} layers gives "
                          f"{edge_k(ev.k_requested, L)}")
    if ev.interval != INTERVAL:
        fail(f"{path}.interval", f"is {ev.interval!r}, expected {INTERVAL!r}")
    for m in ("lrds", "sads"):
        M, mpath = getattr(ev, f"per_layer_{m}"), f"{path}.per_layer_{m}"
        _matrix(M, mpath, L, C)
        for c, cp in enumerate(cps):
            for layer in range(L):
                want = getattr(cp.per_layer, m)[layer].value
                if not close(M[layer][c], want):
                    fail(f"{mpath}[{layer}][{c}]", f"is {M[layer][c]!r} but checkpoints[{c}].per_layer.{m}"
                                                   f"[{layer}].value is {want!r}")
    _keys(ev.key_counts, f"{path}.key_counts", langs, "languages")
    for lang in langs:
        kpath = _key(f"{path}.key_counts", lang)
        _matrix(ev.key_counts[lang], kpath, L, C)
        for c, cp in enumerate(cps):
            col = [ev.key_counts[lang][layer][c] for layer in range(L)]
            if col != cp.key_neurons.counts[lang]:
                fail(f"{kpath}", f"column {c} is {col} but checkpoints[{c}].key_neurons.counts"
                                 f"[{lang!r}] is {cp.key_neurons.counts[lang]}")
    _keys(ev.edge_share, f"{path}.edge_share", langs, "languages")
    for lang in langs:
        epath = _key(f"{path}.edge_share", lang)
        _length(ev.edge_share[lang], epath, C, f"one per checkpoint ({C})")
        for c, es in enumerate(ev.edge_share[lang]):
            _check_edge(es, f"{epath}[{c}]", cps[c].key_neurons.counts[lang], ev.k)
    _length(ev.edge_share_pooled, f"{path}.edge_share_pooled", C, f"one per checkpoint ({C})")
    for c, es in enumerate(ev.edge_share_pooled):
        pooled = [sum(cps[c].key_neurons.counts[lang][layer] for lang in langs) for layer in range(L)]
        _check_edge(es, f"{path}.edge_share_pooled[{c}]", pooled, ev.k)
    _check_jaccard(ev, path, cps, langs, C)


def _check_edge(es: Any, path: str, counts: list[int], k: int) -> None:
    n, L = sum(counts), len(counts)
    if es.n_key != n:
        fail(f"{path}.n_key", f"is {es.n_key} but the key counts sum to {n}")
    for part, layers in edge_layers(k, L).items():
        st, spath = getattr(es, part), f"{path}.{part}"
        want = sum(counts[i] for i in layers)
        if st.count != want:
            fail(f"{spath}.count", f"is {st.count} but the key counts of layers {layers} sum to {want}")
        if not close(st.uniform, len(layers) / L):
            fail(f"{spath}.uniform", f"is {st.uniform!r}, expected {len(layers)}/{L}")
        if n == 0:
            for f in ("share", "ci", "p_value"):
                if getattr(st, f) is not None:
                    fail(f"{spath}.{f}", "must be null: this checkpoint has no key neurons")
            continue
        if st.share is None or not close(st.share, want / n):
            fail(f"{spath}.share", f"is {st.share!r} but count / n_key is {want / n!r}")
        if st.ci is None or not st.ci[0] - 1e-9 <= st.share <= st.ci[1] + 1e-9:
            fail(f"{spath}.ci", f"{st.ci} does not contain the share {st.share!r}")
        if st.p_value is None:
            fail(f"{spath}.p_value", "is null but the checkpoint has key neurons")


def _check_jaccard(ev: Any, path: str, cps: list, langs: list[str], C: int) -> None:
    if (ev.jaccard is None) != (ev.jaccard_chance is None):
        fail(f"{path}.jaccard_chance", "must be null exactly when jaccard is null")
    if ev.jaccard is None:
        return
    for name in ("jaccard", "jaccard_chance"):
        table = getattr(ev, name)
        _keys(table, f"{path}.{name}", langs, "languages")
        for lang in langs:
            jpath = _key(f"{path}.{name}", lang)
            _length(table[lang], jpath, C - 1, f"one per consecutive pair ({C - 1})")
            for c, j in enumerate(table[lang]):
                a, b = cps[c].key_neurons.counts[lang], cps[c + 1].key_neurons.counts[lang]
                empty = sum(a) + sum(b) == 0
                if (j is None) != empty:
                    fail(f"{jpath}[{c}]", "must be null exactly when both key sets are empty")
                # |A∩B| ≤ Σ_layer min(a, b) and |A∪B| ≥ Σ_layer max(a, b)
                bound = 0.0 if empty else sum(map(min, a, b)) / sum(map(max, a, b))
                if j is not None and name == "jaccard" and j > bound + 1e-9:
                    fail(f"{jpath}[{c}]", f"{j!r} exceeds {bound!r}, the most the key counts allow")


def check_identical_checkpoints(groups: list[list[str]], path: str, grid: Any) -> None:
    """Each group: ≥ 2 grid labels in grid order; no label in two groups."""
    order = {r.label: i for i, r in enumerate(grid.checkpoints)}
    seen: set[str] = set()
    for g, group in enumerate(groups):
        for label in group:
            if label not in order:
                fail(f"{path}[{g}]", f"{label!r} is not a grid.checkpoints label")
            if label in seen:
                fail(f"{path}[{g}]", f"{label!r} repeats (a label belongs to one group)")
            seen.add(label)
        if [order[x] for x in group] != sorted(order[x] for x in group):
            fail(f"{path}[{g}]", f"{group} is not in grid order")
