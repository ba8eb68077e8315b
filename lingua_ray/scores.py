"""LRDS and SADS with bootstrap intervals and permutation tests, from (S, S) summaries of one scope.

Pure numpy; the summaries come from lingua_ray.summaries (docs/metrics.md, "Streamed summaries"):
``A[s,t] = Σ_{l,m} C[(l,s),(m,t)]`` and ``Wl[s,t] = Σ_l C[(l,s),(l,t)]`` of a scope's cosine C. The
bootstrap needs only these; the permutation tests need the cosine over the permutation units
(K·S_p, K·S_p), S_p <= perm_max_rows // K. The draws are those of uncertainty.bootstrap_ci and
uncertainty.permutation_test (the Gram-path reference), in the same order from the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from lingua_ray.uncertainty import Interval, PermutationResult  # one definition of each

from lingua_ray import metrics
from lingua_ray.metrics import _TIE_TOL

if TYPE_CHECKING:
    from lingua_ray.summaries import Plan

__all__ = ["Interval", "PermutationResult", "ScopeStats", "bootstrap_weights", "lrds_null", "pair_scores",
           "permutation_draws", "sads_null", "scope_stats", "sub_cosine"]

_CHUNK = 1 << 22  # float64 elements of one temporary in chunked loops (32 MiB)


def pair_scores(A: np.ndarray, Wl: np.ndarray, K: int, S: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LRDS, SADS (R,) for unit weights w (R, S) (draw counts; w = 1 is the data) on (S, S) summaries.

    With X = A − Wl (cross-language) and P = S² − Σ w²:
    within = (wᵀWl w − Σ w² diag Wl) / (K P), cross = (wᵀX w − Σ w² diag X) / (K(K−1) P),
    same = (w · diag X) / (K(K−1) S); LRDS = within − cross, SADS = same − cross.
    """
    X = A - Wl
    d_in, d_x = np.diagonal(Wl), np.diagonal(X)
    lr, sa = np.empty(len(w)), np.empty(len(w))
    step = max(1, _CHUNK // S)
    for r0 in range(0, len(w), step):
        v = w[r0 : r0 + step]
        v2 = v * v
        P = S * S - v2.sum(axis=1)
        q_in = np.einsum("rs,rs->r", v @ Wl, v)
        q_x = np.einsum("rs,rs->r", v @ X, v)
        within = (q_in - v2 @ d_in) / (K * P)
        cross = (q_x - v2 @ d_x) / (K * (K - 1) * P)
        lr[r0 : r0 + step] = within - cross
        sa[r0 : r0 + step] = (v @ d_x) / (K * (K - 1) * S) - cross
    return lr, sa


def bootstrap_weights(S: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, S) draw counts, >= 2 distinct units each: uncertainty.bootstrap_ci's draws exactly."""
    rng = np.random.default_rng(int(seed))
    W = np.zeros((n_boot, S))
    todo = np.arange(n_boot)
    while todo.size:  # a resample of one distinct unit has no different-meaning pair: redraw it
        idx = rng.integers(0, S, size=(todo.size, S))
        counts = np.bincount((idx + S * np.arange(todo.size)[:, None]).ravel(), minlength=todo.size * S)
        W[todo] = counts.reshape(todo.size, S)
        todo = todo[(W[todo] > 0).sum(axis=1) < 2]
    return W


def permutation_draws(K: int, S: int, n_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """pi (n_perm, S, K) language relabellings per unit, sigma (n_perm, K, S) re-alignments per
    language: the draws of uncertainty.permutation_test, in its order, from ``default_rng(seed)``."""
    rng = np.random.default_rng(int(seed))
    pi = rng.permuted(np.broadcast_to(np.arange(K), (n_perm, S, K)), axis=-1)
    sigma = rng.permuted(np.broadcast_to(np.arange(S), (n_perm, K, S)), axis=-1)
    return pi, sigma


def sub_cosine(G: np.ndarray, K: int, S: int, where: str) -> np.ndarray:
    """Cosine of a subsample Gram (K·S_p, K·S_p); a zero norm raises (metrics.cosine_from_gram)."""
    return metrics.cosine_from_gram(G, K, S, where=where)


def _gather_sum(C: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(R,) Σ over g, i, j of C[rows[r, g, i], rows[r, g, j]] for rows (R, G, n): the sum of C over
    the diagonal blocks of the grouping ``rows[r]`` (G groups of n rows), for every permutation r.

    Three routes, by what is fastest here (bench/bench_reduce_scale.py --perm-cost): few groups
    (G <= 16): C @ E with E the (N, G) one-hot of the grouping, batched over permutations (BLAS,
    2·N²·G flops); large groups (n >= 32): one (n, n) block gather per group, rows sorted so reads
    run forward through memory; otherwise one flat gather over a chunk of permutations.
    """
    R, G, n = rows.shape
    N = len(C)
    out = np.zeros(R)
    if G <= 16:
        step = max(1, _CHUNK // (N * G))
        for r0 in range(0, R, step):
            idx = rows[r0 : r0 + step]
            cols = np.broadcast_to((np.arange(len(idx))[:, None] * G + np.arange(G))[:, :, None], idx.shape)
            E = np.zeros((N, len(idx) * G))
            E[idx, cols] = 1.0
            out[r0 : r0 + step] = (C @ E)[idx, cols].sum(axis=(1, 2))
        return out
    if n >= 32:
        rows = np.sort(rows, axis=-1)
        for r in range(R):
            for g in range(G):
                i = rows[r, g]
                out[r] += C[np.ix_(i, i)].sum()
        return out
    flat = C.reshape(-1)
    step = max(1, _CHUNK // (G * n * n))
    for r0 in range(0, R, step):
        idx = rows[r0 : r0 + step]
        out[r0 : r0 + step] = flat[idx[..., :, None] * N + idx[..., None, :]].sum(axis=(1, 2, 3))
    return out


def lrds_null(C: np.ndarray, K: int, S: int, pi: np.ndarray) -> np.ndarray:
    """LRDS (R,) of cosine C (K·S, K·S) with language labels permuted within units; pi (R, S, K).

    Only the same-label sum changes: Σ_l Σ_{s,t} C[row(l,s), row(l,t)] − trace, a gather of K·S²
    entries per permutation (K blocks of S × S).
    """
    C4 = C.reshape(K, S, K, S)
    all_off = C.sum() - np.einsum("lsms->", C4)  # every pair s != t, any languages
    rows = pi.transpose(0, 2, 1) * S + np.arange(S)  # (R, K, S): the row that carries label l at unit s
    within = _gather_sum(C, rows) - np.trace(C)
    return within / (K * S * (S - 1)) - (all_off - within) / (K * (K - 1) * S * (S - 1))


def sads_null(C: np.ndarray, K: int, S: int, sigma: np.ndarray) -> np.ndarray:
    """SADS (R,) of cosine C with units re-aligned within languages; sigma (R, K, S).

    Only the same-slot sum changes: a gather of S·K² entries per permutation (S blocks of K × K).
    """
    C4 = C.reshape(K, S, K, S)
    cross_all = C.sum() - np.einsum("lslt->", C4)  # every pair of different languages
    rows = (np.arange(K)[:, None] * S + sigma).transpose(0, 2, 1)  # (R, S, K)
    same = _gather_sum(C, rows) - np.trace(C)
    return same / (K * (K - 1) * S) - (cross_all - same) / (K * (K - 1) * S * (S - 1))


@dataclass
class ScopeStats:
    """LRDS and SADS of one scope: values, intervals (None without bootstrap), tests (None without)."""

    lrds: float
    sads: float
    lrds_ci: Optional[tuple] = None
    sads_ci: Optional[tuple] = None
    lrds_perm: Optional[PermutationResult] = None
    sads_perm: Optional[PermutationResult] = None


def _test(stat, C, K, S, perms, ident) -> PermutationResult:
    obs = stat(C, K, S, ident)[0]  # the null's code path: ties compare like with like
    null = stat(C, K, S, perms)
    return PermutationResult(float(obs), float((1 + np.sum(null >= obs - _TIE_TOL)) / (1 + len(perms))), null)


def scope_stats(A: np.ndarray, Wl: np.ndarray, plan: Plan, perm_cosine: Optional[np.ndarray] = None,
                boot_w: Optional[np.ndarray] = None, perms: Optional[tuple] = None) -> ScopeStats:
    """Scores, bootstrap intervals (plan.n_boot) and permutation tests (on ``perm_cosine``, the
    scope's cosine over plan.perm_units) of one scope. ``boot_w``/``perms`` reuse draws across scopes."""
    K, S = plan.K, plan.S
    lr, sa = pair_scores(A, Wl, K, S, np.ones((1, S)))
    out = ScopeStats(float(lr[0]), float(sa[0]))
    if plan.n_boot:
        w = bootstrap_weights(S, plan.n_boot, plan.seed) if boot_w is None else boot_w
        q = [(1 - plan.level) / 2, (1 + plan.level) / 2]
        lr_b, sa_b = pair_scores(A, Wl, K, S, w)
        out.lrds_ci, out.sads_ci = (tuple(float(v) for v in np.quantile(d, q)) for d in (lr_b, sa_b))
    if plan.n_perm and perm_cosine is not None:
        S_p = plan.S_p
        pi, sigma = permutation_draws(K, S_p, plan.n_perm, plan.seed) if perms is None else perms
        out.lrds_perm = _test(lrds_null, perm_cosine, K, S_p, pi, np.broadcast_to(np.arange(K), (1, S_p, K)))
        out.sads_perm = _test(sads_null, perm_cosine, K, S_p, sigma, np.broadcast_to(np.arange(S_p), (1, K, S_p)))
    return out
