"""LRDS, SADS, key neurons, bootstrap and permutation tests, from sufficient statistics only.

Symbols are those of METHOD.md and docs/metrics.md. K languages, S aligned units, N = K·S rows in
language-major order (row ``l*S + s``), L layers, F neurons per layer. Nothing here reads the
activation store; the streamed reducer hands over:

* ``grams`` (L, N, N) float64, ``grams[layer] = A_layer @ A_layer.T`` with A_layer (N, F) that layer's
  activations. The Gram of the flattened ``v`` (all layers) is ``grams.sum(0)``.
* ``sum_x``, ``sum_x2`` (K, L, F) float64, built layer by layer with :func:`neuron_sums` from
  ``a[:, :, layer, :]`` and :func:`unit_norms`.

Cosines are dimensionless; key-neuron scores are in units of cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Interval",
    "PermutationResult",
    "balanced_gram",
    "bootstrap_ci",
    "cosine_from_gram",
    "key_counts",
    "key_neuron_masks",
    "key_neuron_scores",
    "key_neuron_zscores",
    "key_neurons",
    "language_block_means",
    "layer_norm_shares",
    "lrds",
    "meaning_block_means",
    "meaning_major_order",
    "neuron_sums",
    "permutation_test",
    "sads",
    "scores_from_grams",
    "top_fraction_masks",
    "unit_norms",
    "zscores",
]

# Budget for temporaries in the chunked loops (float64 elements, about 32 MiB).
_CHUNK_ELEMS = 1 << 22
# neuron_sums works in blocks of this many float64 elements (1 MiB: stays in cache).
_NEURON_CHUNK_ELEMS = 1 << 17
# Null statistics within this of the observed one count as ties (conservative p-values): a
# relabelling that is the identity up to symmetry gives the same value up to rounding.
_TIE_TOL = 1e-10


# --------------------------------------------------------------------------- validation helpers


def _grid(K: int, S: int, *, min_K: int = 1, min_S: int = 1) -> int:
    if int(K) != K or int(S) != S or K < min_K or S < min_S:
        raise ValueError(f"need K >= {min_K} languages and S >= {min_S} units, got K={K}, S={S}")
    return int(K) * int(S)


def _square(X, K: int, S: int, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    N = K * S
    if X.ndim < 2 or X.shape[-2:] != (N, N):
        raise ValueError(f"{what} must end in shape (N, N) = ({N}, {N}) for K={K}, S={S}; got {X.shape}")
    return X


def _grams(grams, K: int, S: int) -> np.ndarray:
    G = _square(grams, K, S, "grams")
    if G.ndim != 3:
        raise ValueError(f"grams must be (L, N, N); got shape {G.shape}")
    return G


def _row_name(i: int, S: int) -> str:
    l, s = divmod(int(i), S)
    return f"row {i} (language index {l}, unit index {s})"


def meaning_major_order(K: int, S: int) -> np.ndarray:
    """Row indices (N,) that reorder language-major rows into meaning-major order.

    ``order[s*K + l] = l*S + s``. (The authors' release grouped rows with stride S+1, which mixes
    meanings; this is the order METHOD.md defines.)
    """
    _grid(K, S)
    return (np.arange(K)[None, :] * S + np.arange(S)[:, None]).ravel()


# --------------------------------------------------------------------------- cosine, B, D, LRDS, SADS


def cosine_from_gram(G, K: int, S: int, where: str = "") -> np.ndarray:
    """Cosine matrix C (..., N, N) from a Gram matrix G (..., N, N), rows language-major.

    ``C[i, j] = G[i, j] / sqrt(G[i, i] G[j, j])``. A cosine matrix maps to itself. A unit with zero
    (or non-finite) norm has no cosine: ``ValueError`` naming its language and unit index.
    """
    _grid(K, S)
    G = _square(G, K, S, f"Gram matrix{' (' + where + ')' if where else ''}")
    d = np.diagonal(G, axis1=-2, axis2=-1)
    bad = ~(d > 0) | ~np.isfinite(d)
    ctx = f" [{where}]" if where else ""
    if bad.any():
        idx = np.argwhere(bad)[0]
        lead = f"batch index {tuple(int(v) for v in idx[:-1])}, " if len(idx) > 1 else ""
        raise ValueError(
            f"zero or non-finite norm at {lead}{_row_name(idx[-1], S)}{ctx}: squared norm {d[tuple(idx)]!r}; "
            "cosine similarity is undefined for this unit (is its activation all zeros?)"
        )
    if not np.isfinite(G).all():
        idx = np.argwhere(~np.isfinite(G))[0]
        raise ValueError(f"non-finite Gram entry at {_row_name(idx[-2], S)} x column {idx[-1]}{ctx}")
    n = np.sqrt(d)
    C = G / n[..., :, None]
    C /= n[..., None, :]  # in place: one (N, N) temporary, not two
    return C


def _blocks(C: np.ndarray, K: int, S: int) -> np.ndarray:
    # C4[..., l, s, m, t] = C[..., l*S + s, m*S + t]
    return C.reshape(*C.shape[:-2], K, S, K, S)


def language_block_means(C, K: int, S: int) -> np.ndarray:
    """B (..., K, K): ``B[l, m]`` = mean over s != s' of ``C[(l, s), (m, s')]``.

    The unit diagonal is excluded in every block, so off-diagonal blocks hold no translation pairs.
    """
    _grid(K, S, min_S=2)
    C4 = _blocks(_square(C, K, S, "C"), K, S)
    total = C4.sum(axis=(-3, -1))
    same_unit = np.einsum("...lsms->...lm", C4)
    return (total - same_unit) / (S * (S - 1))


def meaning_block_means(C, K: int, S: int) -> np.ndarray:
    """D (..., S, S): ``D[s, s']`` = mean over l != m of ``C[(l, s), (m, s')]``.

    Grouped by meaning (unit identity), i.e. the meaning-major order of :func:`meaning_major_order`.
    """
    _grid(K, S, min_K=2)
    C4 = _blocks(_square(C, K, S, "C"), K, S)
    total = C4.sum(axis=(-4, -2))
    same_lang = np.einsum("...lslt->...st", C4)
    return (total - same_lang) / (K * (K - 1))


def _diag_minus_off(M: np.ndarray) -> np.ndarray:
    n = M.shape[-1]
    tr = np.trace(M, axis1=-2, axis2=-1)
    return tr / n - (M.sum(axis=(-2, -1)) - tr) / (n * (n - 1))


def lrds(C, K: int, S: int) -> np.ndarray:
    """LRDS = mean_l B[l, l] - mean_{l != m} B[l, m]; C (..., N, N) -> (...)."""
    _grid(K, S, min_K=2, min_S=2)
    return _diag_minus_off(language_block_means(C, K, S))


def sads(C, K: int, S: int) -> np.ndarray:
    """SADS = mean_s D[s, s] - mean_{s != s'} D[s, s']; C (..., N, N) -> (...)."""
    _grid(K, S, min_K=2, min_S=2)
    return _diag_minus_off(meaning_block_means(C, K, S))


# --------------------------------------------------------------------------- layer weighting


def layer_norm_shares(grams) -> np.ndarray:
    """(L,) share of the total squared norm, ``sum_i ||v_i||^2``, held by each layer.

    ``||v_i||^2 = sum_layer ||a_i,layer||^2``, so the all-layer cosine is a weighted mean of the
    per-layer cosines with weights ``||a_i,layer|| ||a_j,layer|| / (||v_i|| ||v_j||)``: layers with
    large activations dominate it. These shares show by how much.
    """
    G = np.asarray(grams, dtype=np.float64)
    if G.ndim != 3 or G.shape[1] != G.shape[2]:
        raise ValueError(f"grams must be (L, N, N); got shape {G.shape}")
    tr = np.trace(G, axis1=1, axis2=2)
    total = tr.sum()
    if not total > 0:
        raise ValueError(f"total squared norm is {total!r}: every activation is zero or non-finite")
    return tr / total


def balanced_gram(grams) -> np.ndarray:
    """Layer-balanced Gram (N, N): every layer's vector scaled to unit length before concatenation.

    ``G_bal[i, j] = sum_layer G_layer[i, j] / (n_layer[i] n_layer[j])`` with
    ``n_layer[i] = sqrt(G_layer[i, i])``. A unit whose activation is all zero in some layer has no
    direction there: that layer contributes nothing for that unit (its normalised vector is taken as
    zero), so its squared norm in G_bal is its number of non-zero layers.
    """
    G = np.asarray(grams, dtype=np.float64)
    if G.ndim != 3 or G.shape[1] != G.shape[2]:
        raise ValueError(f"grams must be (L, N, N); got shape {G.shape}")
    out = np.zeros(G.shape[1:], dtype=np.float64)
    for g in G:  # one layer at a time: no (L, N, N) temporary
        n = np.sqrt(np.clip(np.diagonal(g), 0.0, None))
        inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
        scaled = g * inv[:, None]
        scaled *= inv[None, :]
        out += scaled
    return out


def scores_from_grams(grams, K: int, S: int) -> dict:
    """All scores of one checkpoint from its per-layer Grams (L, N, N).

    Returns ``lrds``, ``sads`` (floats, all layers: cosine of ``grams.sum(0)``), ``B`` (K, K) and
    ``D`` (S, S) of that overall C, ``lrds_per_layer``/``sads_per_layer`` (L,),
    ``lrds_balanced``/``sads_balanced`` (floats, from :func:`balanced_gram`) and ``layer_shares`` (L,).
    """
    _grid(K, S, min_K=2, min_S=2)
    G = _grams(grams, K, S)
    C = cosine_from_gram(G.sum(0), K, S, where="all layers")
    B, D = language_block_means(C, K, S), meaning_block_means(C, K, S)
    per_layer = np.array(
        [
            (lrds(c, K, S), sads(c, K, S))
            for c in (cosine_from_gram(g, K, S, where=f"layer {i}") for i, g in enumerate(G))
        ]
    ).reshape(len(G), 2)
    Cb = cosine_from_gram(balanced_gram(G), K, S, where="layer-balanced")
    return {
        "lrds": float(_diag_minus_off(B)),
        "sads": float(_diag_minus_off(D)),
        "B": B,
        "D": D,
        "lrds_per_layer": per_layer[:, 0],
        "sads_per_layer": per_layer[:, 1],
        "lrds_balanced": float(lrds(Cb, K, S)),
        "sads_balanced": float(sads(Cb, K, S)),
        "layer_shares": layer_norm_shares(G),
    }


# --------------------------------------------------------------------------- key neurons


def unit_norms(grams, K: int, S: int) -> np.ndarray:
    """(K, S) norms ``||v[l, s]||`` over all L·F entries, from grams (L, N, N)."""
    G = _grams(grams, K, S)
    sq = np.einsum("lii->i", G)
    bad = ~(sq > 0) | ~np.isfinite(sq)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"unit vector v has zero or non-finite norm at {_row_name(i, S)}: squared norm {sq[i]!r}")
    return np.sqrt(sq).reshape(K, S)


def neuron_sums(a_layer, norms) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer neuron sums for the key-neuron score; the reducer calls this once per layer.

    a_layer (K, S, F): activations ``a[l, s, layer, :]`` (any float dtype); norms (K, S): from
    :func:`unit_norms`. With ``x[l, s, k] = a[l, s, k] / ||v[l, s]||`` returns
    ``sum_x[l, k] = sum_s x`` and ``sum_x2[l, k] = sum_s x**2``, each (K, F) float64.
    """
    a = np.asarray(a_layer)
    if a.ndim != 3:
        raise ValueError(f"a_layer must be (K, S, F); got shape {a.shape}")
    K, S, F = a.shape
    norms = np.asarray(norms, dtype=np.float64)
    if norms.shape != (K, S):
        raise ValueError(f"norms must be (K, S) = ({K}, {S}); got {norms.shape}")
    bad = ~(norms > 0) | ~np.isfinite(norms)
    if bad.any():
        l, s = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"norm of v at language index {l}, unit index {s} is {norms[l, s]!r}; need > 0")
    inv = 1.0 / norms
    inv2 = inv * inv
    sum_x = np.empty((K, F), dtype=np.float64)
    sum_x2 = np.empty((K, F), dtype=np.float64)
    # Cache-sized column blocks in one reused float64 buffer: a fresh multi-MiB temporary per block
    # would be a fresh mmap, and its page faults cost more than the arithmetic.
    step = max(1, min(F, _NEURON_CHUNK_ELEMS // max(S, 1)))
    buf = np.empty((S, step), dtype=np.float64)
    for l in range(K):
        for f0 in range(0, F, step):
            c = min(step, F - f0)
            blk = buf[:, :c]
            np.copyto(blk, a[l, :, f0 : f0 + c])
            np.dot(inv[l], blk, out=sum_x[l, f0 : f0 + c])
            np.multiply(blk, blk, out=blk)
            np.dot(inv2[l], blk, out=sum_x2[l, f0 : f0 + c])
    return sum_x, sum_x2


def key_neuron_scores(sum_x, sum_x2, S: int) -> np.ndarray:
    """score (K, ...) = ((sum_x)^2 - sum_x2) / (S (S-1)): the mean over pairs s != s' of x_s x_s'.

    Shapes follow the inputs, (K, L, F) in the pipeline; summed over all neurons it is B[l, l].
    """
    _grid(1, S, min_S=2)
    sx = np.asarray(sum_x, dtype=np.float64)
    sx2 = np.asarray(sum_x2, dtype=np.float64)
    if sx.shape != sx2.shape:
        raise ValueError(f"sum_x {sx.shape} and sum_x2 {sx2.shape} differ in shape")
    return (sx * sx - sx2) / (S * (S - 1))


def zscores(score, rtol: float = 1e-9, scale=None) -> np.ndarray:
    """z (K, ...) across languages (axis 0), population std (ddof = 0).

    A neuron whose score is the same in every language (std 0) gets z = 0 everywhere, never NaN.
    "The same" allows rounding: std <= rtol * scale, with ``scale`` (broadcastable to
    ``score.shape[1:]``) the magnitude the scores were computed from; by default
    max_l |score[l, k]|. Without that, scores equal in exact arithmetic but computed with norms
    summed in different orders differ by ~1e-16, and z, being scale-free, would blow that up to
    values as large as sqrt(K-1). Prefer :func:`key_neuron_zscores`, which passes the right scale.
    """
    sc = np.asarray(score, dtype=np.float64)
    if sc.ndim < 1 or sc.shape[0] < 2:
        raise ValueError(f"z-scores need K >= 2 languages on axis 0; got shape {sc.shape}")
    if not np.isfinite(sc).all():
        raise ValueError("scores contain non-finite values")
    dev = sc - sc.mean(axis=0)
    std = np.sqrt((dev * dev).mean(axis=0))
    ref = np.abs(sc).max(axis=0) if scale is None else np.broadcast_to(scale, std.shape)
    live = std > rtol * ref
    return np.divide(dev, std, out=np.zeros_like(dev), where=live)


def key_neuron_zscores(sum_x, sum_x2, S: int, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """(score, z), each (K, ...), from the neuron sums.

    Rounding in score = ((sum_x)^2 - sum_x2) / (S(S-1)) is relative to its terms, not to the result
    (which can cancel to ~0), so std is judged zero against max_l ((sum_x)^2 + sum_x2) / (S(S-1)).
    """
    score = key_neuron_scores(sum_x, sum_x2, S)
    sx = np.asarray(sum_x, dtype=np.float64)
    terms = (sx * sx + np.asarray(sum_x2, dtype=np.float64)) / (S * (S - 1))
    return score, zscores(score, rtol=rtol, scale=terms.max(axis=0))


def key_neuron_masks(z, tau: float = 2.0) -> np.ndarray:
    """bool (K, ...) mask: neuron k is key for language l when ``z[l, k] > tau``.

    Since z <= sqrt(K-1), a threshold tau >= sqrt(K-1) cannot select anything: that is an error.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim < 1 or z.shape[0] < 2:
        raise ValueError(f"z must have K >= 2 languages on axis 0; got shape {z.shape}")
    K = z.shape[0]
    bound = float(np.sqrt(K - 1))
    if not tau < bound:
        raise ValueError(
            f"tau={tau} selects no neuron with K={K} languages: a z-score across K languages is at most "
            f"sqrt(K-1) = {bound:.4f}. Use tau < {bound:.4f}, more languages, or top_fraction_masks."
        )
    return z > tau


def top_fraction_masks(z, fraction: float) -> np.ndarray:
    """bool (K, ...) mask: per language the ``floor(fraction * n)`` neurons of highest z, n = all L·F.

    Only neurons with z > 0 are taken (so a language may get fewer). Ties go to the lower flat
    (layer, neuron) index, so the result is deterministic.
    """
    z = np.asarray(z, dtype=np.float64)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    K = z.shape[0]
    flat = z.reshape(K, -1)
    n_top = int(np.floor(fraction * flat.shape[1] + 1e-9))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :n_top]
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return (mask & (flat > 0)).reshape(z.shape)


def key_counts(mask) -> np.ndarray:
    """int (K, L) number of key neurons per language per layer from a (K, L, F) mask."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be (K, L, F); got shape {m.shape}")
    return m.sum(axis=-1, dtype=np.int64)


def key_neurons(sum_x, sum_x2, S: int, tau: float = 2.0) -> dict:
    """Everything METHOD.md reports for key neurons, from sums (K, L, F).

    Returns ``score`` and ``z`` (K, L, F) float64, ``mask`` (K, L, F) bool (z > tau) and
    ``counts`` (K, L) int.
    """
    score, z = key_neuron_zscores(sum_x, sum_x2, S)
    mask = key_neuron_masks(z, tau)
    return {"score": score, "z": z, "mask": mask, "counts": key_counts(mask)}


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
