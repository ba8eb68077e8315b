"""LRDS, SADS and key neurons from sufficient statistics only (uncertainty.py adds intervals and nulls).

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


import numpy as np

__all__ = [
    "balanced_gram",
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
