"""Alignment metrics beside LRDS and SADS: translation retrieval, MEXA, ILO and linear CKA.

From per-unit vectors (a layer's ``a[:, :, layer, :]``, or all layers concatenated) or from a Gram
matrix, with rows language-major (row ``l*S + s``, as metrics.py). Similarities are computed in
row blocks whose temporaries stay under ``max_bytes``, so no (N, N) matrix is ever held; what is
kept is sized by K²·S (per-unit outcomes) and K² (CKA). docs/criteria.md defines every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from lingua_ray.metrics import _row_name
from lingua_ray.uncertainty import Interval, _bootstrap_weights


@dataclass
class AlignmentSettings:
    """knn_k: neighbours per unit for ILO (HLTCHKUST/interlingua get_ilo.py default 5).
    bridge_threshold: a unit bridges when its neighbours hold >= this many other languages (3)."""

    knn_k: int = 5
    bridge_threshold: int = 3


DEFAULT_MAX_BYTES = 64 << 20
METRICS = ("retrieval", "mexa", "bridge", "reach", "ilo", "cka")  # the summaries, in results.json order


@dataclass(frozen=True)
class AlignmentScores:
    """Per-unit outcomes of one scope (a layer, or all layers) and the metrics they give.

    hits (K, K, S) bool: ``hits[l, m, s]`` = unit s of l has its translation in m as its strict
        nearest neighbour among m's S units (cosine). The diagonal l = m is False and unused.
    bridged (K, S) bool: the unit's k nearest neighbours (all languages pooled, itself excluded)
        hold >= bridge_threshold languages other than its own.
    reached (K, S, K) bool: ``reached[l, s, m]`` = language m (!= l) is among those neighbours.
    cka (K, K): linear CKA between the languages' unit-by-feature matrices (diagonal 1).
    """

    K: int
    S: int
    knn_k: int
    bridge_threshold: int
    hits: np.ndarray
    bridged: np.ndarray
    reached: np.ndarray
    cka: np.ndarray

    @property
    def retrieval(self) -> np.ndarray:
        """(K, K) top-1 accuracy of retrieving l's units among m's; NaN on the diagonal."""
        return _off_diagonal_nan(self.hits.mean(-1))

    @property
    def mexa(self) -> np.ndarray:
        """(K, K) MEXA strict: cos(i, i) beats every other entry of row i and column i; symmetric."""
        return _off_diagonal_nan((self.hits & self.hits.transpose(1, 0, 2)).mean(-1))

    @property
    def bridge(self) -> np.ndarray:
        return self.bridged.mean(-1)

    @property
    def reach(self) -> np.ndarray:
        return _reach(self.reached.any(1))

    @property
    def ilo(self) -> np.ndarray:
        return harmonic_mean(self.bridge, self.reach)

    def summary(self) -> dict:
        """Floats: means over ordered pairs l != m (retrieval, mexa, cka) and over languages."""
        off = ~np.eye(self.K, dtype=bool)
        return {"retrieval": float(self.retrieval[off].mean()), "mexa": float(self.mexa[off].mean()),
                "bridge": float(self.bridge.mean()), "reach": float(self.reach.mean()),
                "ilo": float(self.ilo.mean()), "cka": float(self.cka[off].mean())}

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "knn_k": self.knn_k, "bridge_threshold": self.bridge_threshold,
                **{k: np.asarray(getattr(self, k)).tolist()
                   for k in METRICS}}


def _off_diagonal_nan(M: np.ndarray) -> np.ndarray:
    M = np.array(M, dtype=np.float64)
    idx = np.arange(M.shape[-1])
    M[..., idx, idx] = np.nan
    return M


def _reach(any_reached: np.ndarray) -> np.ndarray:
    """(..., K) share of the K-1 other languages reached, from (..., K, K) bool (diagonal ignored)."""
    K = any_reached.shape[-1]
    off = ~np.eye(K, dtype=bool)
    return (any_reached & off).sum(-1) / (K - 1)


def harmonic_mean(a, b) -> np.ndarray:
    """2ab / (a + b), 0 where either is 0 (as Python's statistics.harmonic_mean)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = a + b
    return np.divide(2 * a * b, s, out=np.zeros(np.broadcast(a, b).shape), where=(a > 0) & (b > 0))


# --------------------------------------------------------------------------- sources of similarity


class _Vectors:
    """Row blocks of the Gram of vectors given as feature pieces, each (K, S, D_i) or (N, D_i):
    the vector of a unit is the concatenation of its rows in every piece. ``pieces`` may be a
    lazy sequence (each item read when indexed), e.g. one layer per item."""

    def __init__(self, pieces: Sequence, K: int, S: int):
        self.pieces, self.K, self.S, self.N = pieces, K, S, K * S

    def _rows(self, i: int) -> np.ndarray:
        X = np.asarray(self.pieces[i])
        if X.shape[:2] == (self.K, self.S):
            X = X.reshape(self.N, -1)
        if X.ndim != 2 or X.shape[0] != self.N:
            raise ValueError(f"vector piece {i} has shape {X.shape}; need (K, S, D) or (N, D), N = {self.N}")
        return X.astype(np.float64, copy=False)

    def norms(self) -> np.ndarray:
        sq = np.zeros(self.N)
        for i in range(len(self.pieces)):
            X = self._rows(i)
            sq += np.einsum("nd,nd->n", X, X)
        return np.sqrt(sq)

    def gram_rows(self, r0: int, r1: int) -> np.ndarray:
        out = np.zeros((r1 - r0, self.N))
        for i in range(len(self.pieces)):
            X = self._rows(i)
            out += X[r0:r1] @ X.T
        return out

    def centred_within(self, s0: int, s1: int) -> np.ndarray:
        """(K, b, S): rows s0..s1 of each language's Gram of its units centred over units."""
        out = np.zeros((self.K, s1 - s0, self.S))
        for i in range(len(self.pieces)):
            X = self._rows(i).reshape(self.K, self.S, -1)
            Xc = X - X.mean(1, keepdims=True)
            for l in range(self.K):  # 2-D products: BLAS (a batched matmul on a transpose is not)
                out[l] += Xc[l, s0:s1] @ Xc[l].T
        return out


class _Gram:
    """Row blocks of a given (N, N) Gram matrix (array or memmap), e.g. the reducer's grams[layer]."""

    def __init__(self, G, K: int, S: int):
        self.G, self.K, self.S, self.N = G, K, S, K * S
        if tuple(np.shape(G)) != (self.N, self.N):
            raise ValueError(f"Gram must be (N, N) = ({self.N}, {self.N}); got {np.shape(G)}")
        self._rmeans: Optional[np.ndarray] = None

    def norms(self) -> np.ndarray:
        return np.sqrt(np.clip(np.asarray(np.diagonal(self.G), dtype=np.float64), 0, None))

    def gram_rows(self, r0: int, r1: int) -> np.ndarray:
        return np.array(self.G[r0:r1], dtype=np.float64)  # a copy: the caller works in place

    def _within(self, l: int, s0: int, s1: int) -> np.ndarray:
        S = self.S
        return np.asarray(self.G[l * S + s0 : l * S + s1, l * S : (l + 1) * S], dtype=np.float64)

    def centred_within(self, s0: int, s1: int) -> np.ndarray:
        if self._rmeans is None:  # row means of every within-language block, one block at a time
            self._rmeans = np.stack([self._within(l, 0, self.S).mean(1) for l in range(self.K)])
        r = self._rmeans
        rbar = r.mean(1)
        return np.stack([self._within(l, s0, s1) - r[l, s0:s1, None] - r[l, None, :] + rbar[l]
                         for l in range(self.K)])


# --------------------------------------------------------------------------- the passes


def _top_k_mask(C: np.ndarray, k: int) -> np.ndarray:
    """bool (b, N): each row's k largest entries; ties at the k-th value go to lower column indices."""
    kth = -np.partition(-C, k - 1, axis=1)[:, k - 1]
    above = C > kth[:, None]
    tied = C == kth[:, None]
    need = k - above.sum(1)
    return above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))


def _scores(src, K: int, S: int, settings: Optional[AlignmentSettings], max_bytes: int) -> AlignmentScores:
    st = settings or AlignmentSettings()
    N = K * S
    k, t = int(st.knn_k), int(st.bridge_threshold)
    if K < 2 or S < 2:
        raise ValueError(f"alignment needs K >= 2 languages and S >= 2 units; got K={K}, S={S}")
    if not 1 <= k <= N - 1:
        raise ValueError(f"knn_k={k} must be in [1, N-1 = {N - 1}]")
    if not 1 <= t <= min(k, K - 1):
        raise ValueError(f"bridge_threshold={t} must be in [1, min(knn_k, K-1) = {min(k, K - 1)}]; "
                         "above that no unit can bridge")
    n = src.norms()
    bad = ~(n > 0) | ~np.isfinite(n)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"zero or non-finite norm at {_row_name(i, S)}: cosine is undefined for this unit")
    hits = np.zeros((K, K, S), dtype=bool)
    bridged = np.zeros((K, S), dtype=bool)
    reached = np.zeros((K, S, K), dtype=bool)
    step = max(1, min(N, int(max_bytes) // (40 * N)))  # ~5 (b, N) 8-byte temporaries
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        b = r1 - r0
        rows = np.arange(r0, r1)
        l_row, s_row = rows // S, rows % S
        C = src.gram_rows(r0, r1)
        C /= n[r0:r1, None]
        C /= n[None, :]
        C3 = C.reshape(b, K, S)
        ib = np.arange(b)
        own = C3[ib, :, s_row].copy()  # (b, K): cosine with the same unit in every language
        C3[ib, :, s_row] = -np.inf
        hit = own > C3.max(axis=2)  # strict: a tie with another unit is no retrieval
        hit[ib, l_row] = False
        hits[l_row, :, s_row] = hit
        C3[ib, :, s_row] = own
        C[ib, rows] = -np.inf  # a unit is not its own neighbour
        present = _top_k_mask(C, k).reshape(b, K, S).any(axis=2)
        present[ib, l_row] = False
        reached[l_row, s_row] = present
        bridged[l_row, s_row] = present.sum(1) >= t
    return AlignmentScores(K, S, k, t, hits, bridged, reached, _cka(src, K, S, max_bytes))


def _cka(src, K: int, S: int, max_bytes: int) -> np.ndarray:
    """(K, K) linear CKA = <Kc_l, Kc_m>_F / (||Kc_l||_F ||Kc_m||_F), Kc the unit-centred Gram."""
    hsic = np.zeros((K, K))
    step = max(1, min(S, int(max_bytes) // (24 * K * S)))
    for s0 in range(0, S, step):
        Kc = src.centred_within(s0, min(S, s0 + step)).reshape(K, -1)
        hsic += Kc @ Kc.T
    d = np.sqrt(np.diagonal(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic / d[:, None] / d[None, :]  # NaN for a language whose units are all identical


def alignment_from_vectors(vectors, K: int, S: int, settings: Optional[AlignmentSettings] = None,
                           max_bytes: int = DEFAULT_MAX_BYTES) -> AlignmentScores:
    """Scores from per-unit vectors: one array (K, S, D) / (N, D), or a sequence of such pieces whose
    concatenation along features is the vector (e.g. every layer: the all-layer ``v``)."""
    pieces = [vectors] if isinstance(vectors, np.ndarray) else vectors
    return _scores(_Vectors(pieces, K, S), K, S, settings, max_bytes)


def alignment_from_gram(G, K: int, S: int, settings: Optional[AlignmentSettings] = None,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> AlignmentScores:
    """Scores from an (N, N) Gram of raw (uncentred) vectors, e.g. grams[layer] or grams.sum(0).
    CKA is centred from the Gram itself (G - row means - column means + grand mean)."""
    return _scores(_Gram(G, K, S), K, S, settings, max_bytes)


class _LayerPieces:
    """A lazy sequence of layers: item i is ``reader(i)``, read when indexed, never kept."""

    def __init__(self, reader: Callable[[int], np.ndarray], n_layers: int):
        self.reader, self.n = reader, n_layers

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.reader(i)


def alignment_per_layer(reader: Callable[[int], np.ndarray], n_layers: int, K: int, S: int,
                        settings: Optional[AlignmentSettings] = None, max_bytes: int = DEFAULT_MAX_BYTES,
                        overall: bool = True) -> dict:
    """``{"per_layer": [AlignmentScores] * L, "overall": AlignmentScores | None}`` from a reader
    ``layer -> (K, S, F)``. The overall scope (all layers concatenated) reads every layer once per
    row block; pass a memory-mapped or in-memory reader, or use alignment_from_gram(grams.sum(0))."""
    per_layer = [alignment_from_vectors(reader(i), K, S, settings, max_bytes) for i in range(n_layers)]
    whole = (alignment_from_vectors(_LayerPieces(reader, n_layers), K, S, settings, max_bytes)
             if overall else None)
    return {"per_layer": per_layer, "overall": whole}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_alignment(scores: AlignmentScores, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """Percentile intervals over units for retrieval, MEXA, bridge, reach and ILO.

    The resamples are uncertainty.bootstrap_ci's (same seed, same draws of S units with
    replacement, the same in every language); each draw re-averages the per-unit outcomes with its
    draw counts, while neighbours and candidates stay those of the full set. Reach of a draw counts
    the languages reached by any drawn unit. Returns ``{name: Interval}`` for the summary means
    and ``{name}_per_language`` / ``{name}_pairs`` for the (K,) / (K, K) arrays, plus n_boot, seed,
    level. CKA has no interval here (it is not a mean over units).
    """
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1; got level={level}, n_boot={n_boot}")
    K, S = scores.K, scores.S
    W = _bootstrap_weights(S, int(n_boot), np.random.default_rng(int(seed)))  # (R, S) draw counts
    q = [(1 - level) / 2, (1 + level) / 2]
    off = ~np.eye(K, dtype=bool)
    mexa_hits = scores.hits & scores.hits.transpose(1, 0, 2)
    draws = {
        "retrieval_pairs": np.einsum("rs,lms->rlm", W, scores.hits) / S,
        "mexa_pairs": np.einsum("rs,lms->rlm", W, mexa_hits) / S,
        "bridge_per_language": W @ scores.bridged.T.astype(np.float64) / S,
        "reach_per_language": _reach(np.einsum("rs,lsm->rlm", W, scores.reached) > 0),
    }
    draws["ilo_per_language"] = harmonic_mean(draws["bridge_per_language"], draws["reach_per_language"])
    est = {"retrieval_pairs": scores.retrieval, "mexa_pairs": scores.mexa,
           "bridge_per_language": scores.bridge, "reach_per_language": scores.reach,
           "ilo_per_language": scores.ilo}
    out: dict = {"n_boot": int(n_boot), "seed": int(seed), "level": float(level)}
    for name, d in draws.items():
        base = name.split("_")[0]
        if name.endswith("_pairs"):
            d = np.where(off, d, np.nan)
            summary_draws, summary = d[:, off].mean(1), float(est[name][off].mean())
        else:
            summary_draws, summary = d.mean(1), float(est[name].mean())
        lo, hi = np.quantile(d, q, axis=0)
        out[name] = Interval(est[name], lo, hi)
        slo, shi = np.quantile(summary_draws, q)
        out[base] = Interval(summary, float(slo), float(shi))
    return out


__all__ = ["AlignmentScores", "AlignmentSettings", "DEFAULT_MAX_BYTES", "METRICS", "alignment_from_gram",
           "alignment_from_vectors", "alignment_per_layer", "bootstrap_alignment", "harmonic_mean"]
