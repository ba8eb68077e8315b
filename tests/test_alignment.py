"""Alignment metrics against brute-force loops written from MEXA, ILO and CKA's definitions."""

import math
import statistics
import tracemalloc

import numpy as np
import pytest

from lingua_ray import alignment as al
from lingua_ray.uncertainty import bootstrap_ci

# --------------------------------------------------------------------------- brute force


def brute_cosine(X):
    N = len(X)
    C = [[0.0] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            C[i][j] = float(np.dot(X[i], X[j]) / math.sqrt(np.dot(X[i], X[i]) * np.dot(X[j], X[j])))
    return C


def brute_retrieval_and_mexa(C, K, S):
    """Top-1 l→m (strictly nearest among m's units), and compute_mexa.py's mexa() per pair."""
    ret = np.full((K, K), np.nan)
    mexa = np.full((K, K), np.nan)
    for l in range(K):
        for m in range(K):
            if l == m:
                continue
            M = np.array([[C[l * S + s][m * S + t] for t in range(S)] for s in range(S)])
            ret[l, m] = sum(M[s, s] > max(np.delete(M[s], s)) for s in range(S)) / S
            count = 0
            for i in range(S):
                if M[i, i] > max(np.delete(M[i], i)) and M[i, i] > max(np.delete(M[:, i], i)):
                    count += 1
            mexa[l, m] = count / S
    return ret, mexa


def brute_ilo(C, K, S, k, t):
    """src/ilo.py compute_bridge_reach + derive_metrics, neighbours ordered by (cosine desc, index)."""
    N = K * S
    labels = [i // S for i in range(N)]
    bridge, reach = [0] * K, [set() for _ in range(K)]
    for i in range(N):
        others = sorted((j for j in range(N) if j != i), key=lambda j: (-C[i][j], j))[:k]
        langs = {labels[j] for j in others} - {labels[i]}
        if len(langs) >= t:
            bridge[labels[i]] += 1
        reach[labels[i]] |= langs
    b = [x / S for x in bridge]
    r = [len(x) / (K - 1) for x in reach]
    return b, r, [statistics.harmonic_mean([x, y]) for x, y in zip(b, r)]


def brute_cka(A, B):
    """Linear CKA in feature space: ||Bc' Ac||² / (||Ac' Ac|| ||Bc' Bc||), columns centred."""
    Ac, Bc = A - A.mean(0), B - B.mean(0)
    return np.linalg.norm(Bc.T @ Ac) ** 2 / (np.linalg.norm(Ac.T @ Ac) * np.linalg.norm(Bc.T @ Bc))


def random_units(K=4, S=7, D=5, seed=0, shared=0.8):
    """Units with a shared meaning component (so retrieval is neither 0 nor 1) and language offsets."""
    rng = np.random.default_rng(seed)
    meaning = rng.normal(size=(1, S, D))
    lang = rng.normal(size=(K, 1, D))
    return shared * meaning + 0.5 * lang + rng.normal(size=(K, S, D))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("max_bytes", [1, 2000, al.DEFAULT_MAX_BYTES])
def test_against_brute_force(max_bytes):
    K, S = 4, 7
    X = random_units(K, S)
    sc = al.alignment_from_vectors(X, K, S, max_bytes=max_bytes)
    C = brute_cosine(X.reshape(K * S, -1))
    ret, mexa = brute_retrieval_and_mexa(C, K, S)
    np.testing.assert_array_equal(sc.retrieval, ret)
    np.testing.assert_array_equal(sc.mexa, mexa)
    off = ~np.eye(K, dtype=bool)
    assert 0 < ret[off].mean() < 1 and 0 < mexa[off].mean() < 1  # the data exercise both outcomes
    b, r, ilo = brute_ilo(C, K, S, k=5, t=3)
    np.testing.assert_allclose(sc.bridge, b)
    np.testing.assert_allclose(sc.reach, r)
    np.testing.assert_allclose(sc.ilo, ilo)
    assert 0 < np.mean(b) < 1
    cka = np.array([[brute_cka(X[l], X[m]) for m in range(K)] for l in range(K)])
    np.testing.assert_allclose(sc.cka, cka, rtol=1e-10)
    summary = sc.summary()
    assert summary["retrieval"] == pytest.approx(ret[off].mean())
    assert summary["ilo"] == pytest.approx(np.mean(ilo))


def test_other_k_and_t_match_brute_force():
    K, S = 5, 6
    X = random_units(K, S, D=4, seed=3, shared=0.3)
    sc = al.alignment_from_vectors(X, K, S, al.AlignmentSettings(knn_k=8, bridge_threshold=2))
    b, r, ilo = brute_ilo(brute_cosine(X.reshape(K * S, -1)), K, S, k=8, t=2)
    np.testing.assert_allclose(sc.bridge, b)
    np.testing.assert_allclose(sc.ilo, ilo)


def test_gram_and_pieces_agree_with_vectors():
    K, S = 4, 6
    X = random_units(K, S, D=9, seed=1)
    want = al.alignment_from_vectors(X, K, S)
    G = X.reshape(K * S, -1) @ X.reshape(K * S, -1).T
    for got in (al.alignment_from_gram(G, K, S, max_bytes=1),
                al.alignment_from_vectors([X[..., :4], X[..., 4:]], K, S, max_bytes=500)):
        np.testing.assert_array_equal(got.hits, want.hits)
        np.testing.assert_array_equal(got.reached, want.reached)
        np.testing.assert_array_equal(got.bridged, want.bridged)
        np.testing.assert_allclose(got.cka, want.cka, rtol=1e-9)


def test_per_layer_and_overall():
    K, S, L = 4, 5, 3
    rng = np.random.default_rng(2)
    a = rng.normal(size=(K, S, L, 4))
    out = al.alignment_per_layer(lambda i: a[:, :, i, :], L, K, S, max_bytes=100)
    for i, sc in enumerate(out["per_layer"]):
        np.testing.assert_array_equal(sc.hits, al.alignment_from_vectors(a[:, :, i], K, S).hits)
    whole = al.alignment_from_vectors(a.reshape(K, S, -1), K, S)
    np.testing.assert_array_equal(out["overall"].hits, whole.hits)
    np.testing.assert_allclose(out["overall"].cka, whole.cka, rtol=1e-10)


def test_planted_alignment_extremes():
    K, S, D = 4, 10, 12
    rng = np.random.default_rng(4)
    meaning = rng.normal(size=(1, S, D))
    aligned = meaning + 0.01 * rng.normal(size=(K, S, D))
    sc = al.alignment_from_vectors(aligned, K, S)
    off = ~np.eye(K, dtype=bool)
    assert (sc.retrieval[off] == 1).all() and (sc.mexa[off] == 1).all()
    assert (sc.bridge == 1).all() and (sc.ilo == 1).all() and sc.cka[off].min() > 0.99
    separate = 5 * np.eye(K)[:, None, :] + rng.normal(size=(K, S, K))  # one direction per language
    sc = al.alignment_from_vectors(separate, K, S)
    assert (sc.bridge == 0).all() and (sc.ilo == 0).all()


def test_a_tie_is_no_retrieval():
    # integer vectors: dot products are exact, so two identical units in m tie exactly
    rng = np.random.default_rng(8)
    K, S = 4, 5
    X = rng.integers(-3, 4, size=(K, S, 6)).astype(float)
    X[:, 1] = X[:, 0]  # units 0 and 1 are the same vector in every language
    sc = al.alignment_from_vectors(X, K, S)
    ret, mexa = brute_retrieval_and_mexa(brute_cosine(X.reshape(K * S, -1)), K, S)
    np.testing.assert_array_equal(sc.retrieval, ret)
    np.testing.assert_array_equal(sc.mexa, mexa)
    assert not sc.hits[:, :, :2].any()  # cos to unit 0 equals cos to unit 1: neither is retrieved


def test_top_k_ties_go_to_lower_index():
    C = np.array([[0.0, 2.0, 1.0, 2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(al._top_k_mask(C, 3), [[False, True, True, True, False, False]])


def test_bootstrap_resamples_units_like_lrds_sads():
    K, S = 4, 9
    X = random_units(K, S, seed=5)
    sc = al.alignment_from_vectors(X, K, S)
    out = al.bootstrap_alignment(sc, n_boot=200, seed=3)
    # the same draws as uncertainty.bootstrap_ci (S = 9: a draw of < 2 distinct units never occurs here)
    idx = np.random.default_rng(3).integers(0, S, size=(200, S))
    off = ~np.eye(K, dtype=bool)
    ret = np.array([sc.hits[:, :, d].mean(-1)[off].mean() for d in idx])
    lo, hi = np.quantile(ret, [0.025, 0.975])
    assert out["retrieval"].lo == pytest.approx(lo) and out["retrieval"].hi == pytest.approx(hi)
    assert out["retrieval"].estimate == pytest.approx(sc.summary()["retrieval"])
    reach = np.array([al._reach(sc.reached[:, d].any(1)).mean() for d in idx])
    assert out["reach"].lo == pytest.approx(np.quantile(reach, 0.025))
    bridge = np.array([sc.bridged[:, d].mean(-1) for d in idx])
    ilo = np.array([[statistics.harmonic_mean([float(b), float(r)])
                     for b, r in zip(bb, al._reach(sc.reached[:, d].any(1)))] for bb, d in zip(bridge, idx)])
    np.testing.assert_allclose(out["ilo_per_language"].hi, np.quantile(ilo, 0.975, axis=0))
    assert out["mexa_pairs"].lo.shape == (K, K)
    G = X.reshape(K * S, -1) @ X.reshape(K * S, -1).T
    ci = bootstrap_ci(G, K, S, n_boot=200, seed=3)  # runs on the same seeds without complaint
    assert ci["n_boot"] == out["n_boot"]
    again = al.bootstrap_alignment(sc, n_boot=200, seed=3)
    assert again["ilo"] == out["ilo"]


def test_memory_stays_in_row_blocks():
    K, S, D = 6, 200, 16
    N = K * S
    X = random_units(K, S, D=D, seed=6)
    tracemalloc.start()
    al.alignment_from_vectors(X, K, S, max_bytes=1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < N * N * 8 / 3, f"peak {peak} bytes: an (N, N) float64 is {N * N * 8}"


def test_errors_say_what_is_wrong():
    X = random_units(4, 4)
    X[1, 2] = 0.0
    with pytest.raises(ValueError, match="language index 1, unit index 2"):
        al.alignment_from_vectors(X, 4, 4)
    with pytest.raises(ValueError, match="bridge_threshold=3"):
        al.alignment_from_vectors(random_units(3, 4), 3, 4)  # K-1 = 2 other languages only
    with pytest.raises(ValueError, match="vector piece 0"):
        al.alignment_from_vectors(np.ones((5, 3)), 4, 4)
