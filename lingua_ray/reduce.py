"""Reduce tasks over the activation store: one layer of one checkpoint each, in unit blocks.

Two passes per checkpoint, each one task per layer (the stage runs them in parallel):

1. :func:`layer_sq_norms` → q_λ (K, S). The driver folds them into
   :class:`~lingua_ray.summaries.Norms` (all-layer norms ν, non-zero layer counts c, layer shares).
2. :func:`layer_summary` → :class:`~lingua_ray.summaries.LayerSummary`: the layer's (S, S) and
   (K, K) pieces, its (K, F) neuron sums, its per-layer scores and tests, and the raw Gram of the
   permutation subsample. The driver adds them up with :func:`checkpoint_scores` (or
   :class:`CheckpointSums`, one summary at a time, in any order).

A task holds at most two (K, plan.block, F) blocks plus fixed (S, S) and subsample arrays; the
block comes from ``plan.max_task_bytes`` (summaries.make_plan). No (N, N) matrix, N = K·S, exists
anywhere; the driver holds one checkpoint's sums (docs/metrics.md, "Streamed summaries").

``layer_gram`` / ``layer_neuron_sums`` are the pre-redesign (N, N) path, kept only while the
stage still calls them and as the naive reference in tests.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np

from lingua_ray import metrics
from lingua_ray.store import ActivationStore, StoreError
from lingua_ray.scores import (Interval, PermutationResult, ScopeStats, bootstrap_weights, permutation_draws,
                               scope_stats, sub_cosine)
from lingua_ray.summaries import BlockReader, LayerSummary, Norms, Plan, make_plan
from lingua_ray.summaries import layer_sq_norms as _sq_pass
from lingua_ray.summaries import layer_summary as _summary_pass

__all__ = ["CheckpointSums", "block_reader", "checkpoint_scores", "layer_sq_norms", "layer_summary",
           "plan_for_store"]


def block_reader(store: ActivationStore, checkpoint: str, layer: int, stat: str = "mean") -> BlockReader:
    """``read(s0, s1) -> float32 (K, s1 - s0, F)`` of one layer; missing cells raise StoreError."""

    def read(s0: int, s1: int) -> np.ndarray:
        a = store.read_layer_block(checkpoint, layer, s0, s1, stat)
        if not np.isfinite(a).all():
            k, s, _ = np.argwhere(~np.isfinite(a))[0]
            raise StoreError(f"checkpoint {checkpoint!r} layer {layer}: cell language={store.languages[k]} "
                             f"unit={store.unit_ids[s0 + s]} is missing or non-finite; record the grid first")
        return a

    return read


def plan_for_store(store_path: str, **settings) -> Plan:
    """summaries.make_plan for the store's grid (K, S, F, unit block); settings as make_plan's."""
    store = ActivationStore(store_path)
    _, K, S, _, F = store.shape
    return make_plan(K, S, F, unit_block=int(store.manifest["unit_block"]), **settings)


def layer_sq_norms(store_path: str, checkpoint: str, layer: int, plan: Plan, stat: str = "mean") -> np.ndarray:
    """Task, pass 1: q (K, S) float64 squared norms of one layer."""
    return _sq_pass(block_reader(ActivationStore(store_path), checkpoint, layer, stat), plan)


def layer_summary(store_path: str, checkpoint: str, layer: int, plan: Plan, norms: Norms,
                  stat: str = "mean") -> LayerSummary:
    """Task, pass 2: one layer's summary (summaries.layer_summary) read from the store."""
    return _summary_pass(block_reader(ActivationStore(store_path), checkpoint, layer, stat), layer, plan, norms)


class CheckpointSums:
    """The driver's running sums over one checkpoint's layers; add summaries in any order, once each.

    Holds four (S, S), one (K, K), two (K, L, F) and two (K·S_p, K·S_p) float64 arrays; keeps no
    reference into an added summary (drop it after ``add`` and its memory is free).
    """

    def __init__(self, plan: Plan, norms: Norms):
        K, S, F, L = plan.K, plan.S, plan.F, norms.L
        self.plan, self.norms = plan, norms
        self.A, self.Wl, self.A_bal, self.Wl_bal = (np.zeros((S, S)) for _ in range(4))
        self.U = np.zeros((K, K))
        self.sum_x, self.sum_x2 = np.zeros((K, L, F)), np.zeros((K, L, F))
        self.per_layer: list[ScopeStats | None] = [None] * L
        self.seen: set[int] = set()
        Np = K * plan.S_p
        self.G = np.zeros((Np, Np)) if plan.n_perm else None
        self.G_bal = np.zeros((Np, Np)) if plan.n_perm else None

    def add(self, s: LayerSummary) -> None:
        if not 0 <= s.layer < self.norms.L or s.layer in self.seen:
            raise ValueError(f"layer {s.layer} is out of range 0..{self.norms.L - 1} or was added twice")
        self.seen.add(s.layer)
        for acc, part in ((self.A, s.A), (self.Wl, s.Wl), (self.A_bal, s.A_bal), (self.Wl_bal, s.Wl_bal),
                          (self.U, s.U)):
            acc += part
        self.sum_x[:, s.layer], self.sum_x2[:, s.layer] = s.sum_x, s.sum_x2
        # A copy, never a view: Ray hands out zero-copy views of its object store, and keeping any one
        # array of a summary pins the whole summary there (and in this process's RSS).
        self.per_layer[s.layer] = copy.deepcopy(s.per_layer)
        if self.G is not None:
            g = s.perm_gram
            self.G += g
            n = np.sqrt(np.clip(np.diagonal(g), 0.0, None))  # balanced: each layer at unit length,
            inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)  # a zero layer contributes nothing
            self.G_bal += g * inv[:, None] * inv[None, :]

    def results(self) -> dict:
        """``{"scores", "bootstrap", "permutation", "sum_x", "sum_x2"}``, shaped as
        metrics.scores_from_grams, uncertainty.bootstrap_ci and uncertainty.permutation_test return
        them (bootstrap / permutation None when n_boot / n_perm is 0)."""
        p, L = self.plan, self.norms.L
        if len(self.seen) != L:
            raise ValueError(f"layers {sorted(set(range(L)) - self.seen)} were never added")
        K, S = p.K, p.S
        boot_w = bootstrap_weights(S, p.n_boot, p.seed) if p.n_boot else None
        perms = permutation_draws(K, p.S_p, p.n_perm, p.seed) if p.n_perm else None
        cos = (None, None) if self.G is None else (sub_cosine(self.G, K, p.S_p, "all layers"),
                                                   sub_cosine(self.G_bal, K, p.S_p, "layer-balanced"))
        overall = scope_stats(self.A, self.Wl, p, cos[0], boot_w, perms)
        balanced = scope_stats(self.A_bal, self.Wl_bal, p, cos[1], boot_w, perms)
        Z = self.sum_x.reshape(K, -1)
        B = (Z @ Z.T - self.U) / (S * (S - 1))
        D = (self.A - self.Wl) / (K * (K - 1))
        scores = {"lrds": overall.lrds, "sads": overall.sads, "B": B, "D": D,
                  "lrds_balanced": balanced.lrds, "sads_balanced": balanced.sads,
                  "layer_shares": self.norms.layer_sq / self.norms.layer_sq.sum()}
        scopes = {"overall": overall, "balanced": balanced}
        if p.per_layer:
            scores["lrds_per_layer"] = np.array([st.lrds for st in self.per_layer])
            scores["sads_per_layer"] = np.array([st.sads for st in self.per_layer])
        return {"scores": scores, "bootstrap": self._boot(scopes) if p.n_boot else None,
                "permutation": self._perm(scopes) if p.n_perm else None,
                "sum_x": self.sum_x, "sum_x2": self.sum_x2}

    def _boot(self, scopes: dict) -> dict:
        p = self.plan
        out = {"n_boot": p.n_boot, "seed": p.seed, "level": p.level}
        for scope, st in scopes.items():
            out[scope] = {"lrds": Interval(st.lrds, *st.lrds_ci), "sads": Interval(st.sads, *st.sads_ci)}
        if p.per_layer:
            out["per_layer"] = {}
            for name in ("lrds", "sads"):
                est = np.array([getattr(st, name) for st in self.per_layer])
                ci = np.array([getattr(st, name + "_ci") for st in self.per_layer])  # (L, 2)
                out["per_layer"][name] = Interval(est, ci[:, 0], ci[:, 1])
        return out

    def _perm(self, scopes: dict) -> dict:
        p = self.plan
        out = {"n_perm": p.n_perm, "seed": p.seed, "n_units": p.S_p, "units": list(p.perm_units)}
        for scope, st in scopes.items():
            out[scope] = {"lrds": st.lrds_perm, "sads": st.sads_perm}
        if p.per_layer:
            out["per_layer"] = {}
            for name in ("lrds", "sads"):
                rs = [getattr(st, name + "_perm") for st in self.per_layer]
                out["per_layer"][name] = PermutationResult(np.array([r.observed for r in rs]),
                                                           np.array([r.p_value for r in rs]),
                                                           np.stack([r.null for r in rs]))
        return out


def checkpoint_scores(layer_summaries: Iterable[LayerSummary], plan: Plan, norms: Norms) -> dict:
    """Combine one checkpoint's layer summaries (consumed one at a time) into its results
    (:meth:`CheckpointSums.results`)."""
    sums = CheckpointSums(plan, norms)
    for s in layer_summaries:
        sums.add(s)
    return sums.results()


# --------------------------------------------------------------------------- pre-redesign (N, N) path


def _layer(store: ActivationStore, checkpoint: str, layer: int, stat: str) -> np.ndarray:
    a = store.read_layer(checkpoint, layer, stat)  # (K, S, F) float32
    if not np.isfinite(a).all():
        k, s, _ = np.argwhere(~np.isfinite(a))[0]
        raise StoreError(
            f"checkpoint {checkpoint!r} layer {layer}: cell language={store.languages[k]} "
            f"unit={store.unit_ids[s]} is missing or non-finite; record the grid first"
        )
    return a


def layer_gram(store_path: str, checkpoint: str, layer: int, stat: str = "mean") -> np.ndarray:
    """float64 (N, N) Gram of one layer, rows language-major (l·S + s). Reference only: O(N²)."""
    store = ActivationStore(store_path)
    a = _layer(store, checkpoint, layer, stat)
    A = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return A @ A.T


def layer_neuron_sums(store_path: str, checkpoint: str, layer: int, norms: np.ndarray,
                      stat: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(sum_x, sum_x2), each float64 (K, F), for one layer; norms (K, S) from metrics.unit_norms."""
    store = ActivationStore(store_path)
    return metrics.neuron_sums(_layer(store, checkpoint, layer, stat), norms)
