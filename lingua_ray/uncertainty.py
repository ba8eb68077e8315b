"""Uncertainty for LRDS and SADS: bootstrap intervals over units and permutation nulls.

Seeded and reproducible; works from a Gram stack (L, N, N) or one Gram / cosine matrix (N, N),
like everything in metrics.py (whose formulas it reuses). docs/metrics.md describes both nulls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lingua_ray.metrics import (_CHUNK_ELEMS, _TIE_TOL, _blocks, _grams, _grid, balanced_gram,
                                cosine_from_gram)

__all__ = ["Interval", "PermutationResult", "bootstrap_ci", "permutation_test"]

# --------------------------------------------------------------------------- uncertainty
#
# Everything below works on two (S, S) summaries of a cosine matrix C:
#   C_all[s, t] = sum_{l, m} C[(l, s), (m, t)],   C_in[s, t] = sum_l C[(l, s), (l, t)].
# With unit weights w (a resample's draw counts; w = 1 is the data itself) and P = S^2 - sum w^2:
#   mean_l B[l,l]          = (w'C_in w - sum w^2 diag C_in) / (K P)
#   mean_{l!=m} B[l,m]     = (w'C_x w - sum w^2 diag C_x) / (K (K-1) P),  C_x = C_all - C_in
#                          = mean_{s!=s'} D[s,s']  (the same cross-language, cross-meaning pairs)
#   mean_s D[s,s]          = (w . diag C_x) / (K (K-1) S)
# Pairs of draws of the same original unit are same-meaning pairs, never different-meaning ones.


@dataclass(frozen=True)
class Interval:
    """Point estimate and percentile interval; floats, or (L,) arrays for per-layer scopes."""

    estimate: float | np.ndarray
    lo: float | np.ndarray
    hi: float | np.ndarray

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in vars(self).items()}


@dataclass(frozen=True)
class PermutationResult:
    """Observed statistic, one-sided p-value and the null draws (..., n_perm)."""

    observed: float | np.ndarray
    p_value: float | np.ndarray
    null: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"observed": np.asarray(self.observed).tolist(), "p_value": np.asarray(self.p_value).tolist()}


def _summaries(C: np.ndarray, K: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    C4 = _blocks(C, K, S)
    return C4.sum(axis=(-4, -2)), np.einsum("...lslt->...st", C4)


def _weighted_scores(C_all, C_in, K: int, S: int, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LRDS and SADS (..., R) for R unit-weight vectors W (R, S) on summaries (..., S, S)."""
    C_x = C_all - C_in
    d_in = np.diagonal(C_in, axis1=-2, axis2=-1)
    d_x = np.diagonal(C_x, axis1=-2, axis2=-1)
    W2 = W * W
    P = S * S - W2.sum(axis=1)

    def quad(M):  # w' M w for every row of W: (..., R)
        return np.einsum("...rs,rs->...r", np.matmul(W, M), W)

    q_in, q_x = quad(C_in), quad(C_x)
    within_off = (q_in - d_in @ W2.T) / (K * P)
    cross_off = (q_x - d_x @ W2.T) / (K * (K - 1) * P)
    cross_same = (d_x @ W.T) / (K * (K - 1) * S)
    return within_off - cross_off, cross_same - cross_off


def _scopes(grams_or_C, K: int, S: int, per_layer: bool):
    """Yield (scope, layer or None, C): 2-D input -> 'overall'; 3-D grams -> overall, balanced, layers."""
    X = np.asarray(grams_or_C, dtype=np.float64)
    if X.ndim == 2:
        yield "overall", None, cosine_from_gram(X, K, S)
        return
    G = _grams(X, K, S)
    yield "overall", None, cosine_from_gram(G.sum(0), K, S, where="all layers")
    yield "balanced", None, cosine_from_gram(balanced_gram(G), K, S, where="layer-balanced")
    if per_layer:
        for i, g in enumerate(G):
            yield "per_layer", i, cosine_from_gram(g, K, S, where=f"layer {i}")


def _bootstrap_weights(S: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, S) draw counts of units resampled with replacement; >= 2 distinct units each."""
    W = np.zeros((n_boot, S))
    todo = np.arange(n_boot)
    while todo.size:  # a resample of one distinct unit has no different-meaning pair: redraw it
        idx = rng.integers(0, S, size=(todo.size, S))
        counts = np.bincount((idx + S * np.arange(todo.size)[:, None]).ravel(), minlength=todo.size * S)
        W[todo] = counts.reshape(todo.size, S)
        todo = todo[(W[todo] > 0).sum(axis=1) < 2]
    return W


def bootstrap_ci(grams_or_C, K: int, S: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 per_layer: bool = True) -> dict:
    """Percentile bootstrap intervals for LRDS and SADS, resampling units (meanings).

    grams_or_C: grams (L, N, N) -> scopes 'overall' (all layers), 'balanced' and, if ``per_layer``,
    'per_layer' ((L,) arrays); or one Gram / cosine matrix (N, N) -> scope 'overall'. A resample
    draws S unit indices with replacement, the same ones in every language; two draws of one
    original unit count as the same meaning (s = s'). Every scope uses the same resamples.
    Returns ``{scope: {"lrds": Interval, "sads": Interval}, "n_boot", "seed", "level"}``.
    """
    _grid(K, S, min_K=2, min_S=2)
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1; got level={level}, n_boot={n_boot}")
    W = _bootstrap_weights(S, int(n_boot), np.random.default_rng(int(seed)))
    q = [(1 - level) / 2, (1 + level) / 2]
    sums: dict[str, list] = {}
    for scope, _, C in _scopes(grams_or_C, K, S, per_layer):
        sums.setdefault(scope, []).append(_summaries(C, K, S))
    out: dict = {"n_boot": int(n_boot), "seed": int(seed), "level": float(level)}
    for scope, parts in sums.items():
        C_all, C_in = (np.stack([p[i] for p in parts]) for i in (0, 1))  # (n_scope, S, S)
        est = _weighted_scores(C_all, C_in, K, S, np.ones((1, S)))
        step = max(1, _CHUNK_ELEMS // (S * len(parts)))
        draws = [_weighted_scores(C_all, C_in, K, S, W[b : b + step]) for b in range(0, len(W), step)]
        res = {}
        for j, name in enumerate(("lrds", "sads")):
            samples = np.concatenate([d[j] for d in draws], axis=-1)  # (n_scope, n_boot)
            lo, hi = np.quantile(samples, q, axis=-1)
            vals = (est[j][:, 0], lo, hi)
            res[name] = Interval(*(v if scope == "per_layer" else float(v[0]) for v in vals))
        out[scope] = res
    return out


def _lrds_null(C: np.ndarray, K: int, S: int, pi: np.ndarray) -> np.ndarray:
    """LRDS (R,) after relabelling languages within each unit; pi[r, s, l] = source language of label l."""
    N = K * S
    all_off = C.sum() - np.einsum("lsms->", _blocks(C, K, S))  # all pairs s != s', any languages
    rows_all = pi * S + np.arange(S)[None, :, None]  # (R, S, K) row that carries label l of unit s
    step = max(1, _CHUNK_ELEMS // (N * K))
    within = np.empty(len(pi))
    for r0 in range(0, len(pi), step):
        rows = rows_all[r0 : r0 + step]
        R = len(rows)
        cols = np.broadcast_to(np.arange(R)[:, None, None] * K + np.arange(K), rows.shape)
        U = np.zeros((N, R * K))
        U[rows, cols] = 1.0
        CU = C @ U  # column (r, l): sum of C over the rows labelled l in relabelling r
        within[r0 : r0 + R] = CU[rows, cols].sum(axis=(1, 2)) - np.trace(C)
    return within / (K * S * (S - 1)) - (all_off - within) / (K * (K - 1) * S * (S - 1))


def _sads_null(C: np.ndarray, K: int, S: int, sigma: np.ndarray) -> np.ndarray:
    """SADS (R,) after re-aligning units within each language; sigma[r, l, s] = source unit of slot s."""
    C4 = _blocks(C, K, S)
    cross_all = C.sum() - np.einsum("lslt->", C4)  # all cross-language pairs
    rows_all = (np.arange(K)[None, :, None] * S + sigma).transpose(0, 2, 1)  # (R, S, K)
    step = max(1, _CHUNK_ELEMS // (S * K * K))
    same = np.empty(len(sigma))
    for r0 in range(0, len(sigma), step):
        rows = rows_all[r0 : r0 + step]
        same[r0 : r0 + len(rows)] = C[rows[..., :, None], rows[..., None, :]].sum(axis=(1, 2, 3))
    same -= np.trace(C)  # drop l = m: each row with itself
    return same / (K * (K - 1) * S) - (cross_all - same) / (K * (K - 1) * S * (S - 1))


def permutation_test(grams_or_C, K: int, S: int, n_perm: int = 1000, seed: int = 0,
                     per_layer: bool = False) -> dict:
    """One-sided permutation tests of LRDS > null and SADS > null.

    LRDS null: within every unit, its K rows get the K language labels in a random order, drawn
    independently per unit (unit identity kept; language identity exchangeable). SADS null: within
    every language, its S rows are assigned to the S unit slots in a random order, drawn
    independently per language (language kept; the alignment of meanings broken).
    p = (1 + #{null >= observed}) / (1 + n_perm). Scopes as in :func:`bootstrap_ci`, all sharing one
    set of permutations. Returns ``{scope: {"lrds": PermutationResult, "sads": ...}, "n_perm", "seed"}``.
    """
    _grid(K, S, min_K=2, min_S=2)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1; got {n_perm}")
    rng = np.random.default_rng(int(seed))
    pi = rng.permuted(np.broadcast_to(np.arange(K), (n_perm, S, K)), axis=-1)
    sigma = rng.permuted(np.broadcast_to(np.arange(S), (n_perm, K, S)), axis=-1)
    ident_pi, ident_sigma = np.broadcast_to(np.arange(K), (1, S, K)), np.broadcast_to(np.arange(S), (1, K, S))
    found: dict[str, list] = {}
    for scope, _, C in _scopes(grams_or_C, K, S, per_layer):
        row = []
        for stat, perms, ident in ((_lrds_null, pi, ident_pi), (_sads_null, sigma, ident_sigma)):
            obs = stat(C, K, S, ident)[0]  # same code path as the null: ties compare like with like
            null = stat(C, K, S, perms)
            row.append((obs, (1 + np.sum(null >= obs - _TIE_TOL)) / (1 + n_perm), null))
        found.setdefault(scope, []).append(row)
    out: dict = {"n_perm": int(n_perm), "seed": int(seed)}
    for scope, rows in found.items():
        res = {}
        for j, name in enumerate(("lrds", "sads")):
            obs, p, null = (np.array([r[j][i] for r in rows]) for i in range(3))
            if scope == "per_layer":
                res[name] = PermutationResult(obs, p, null)
            else:
                res[name] = PermutationResult(float(obs[0]), float(p[0]), null[0])
        out[scope] = res
    return out
