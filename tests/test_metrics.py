"""lingua_ray.metrics against naive loops written straight from METHOD.md, plus invariants."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_ray import metrics as M
from lingua_ray import uncertainty as U
from metric_helpers import reduce_stats

# --------------------------------------------------------------------------- the reducer, mimicked




# --------------------------------------------------------------------------- naive references


def ref_cosine(a):
    """Flatten v[l, s], rows l*S + s, cosine by loops."""
    K, S = a.shape[:2]
    v = [a[l, s].ravel() for l in range(K) for s in range(S)]
    N = len(v)
    C = np.empty((N, N))
    for i in range(N):
        for j in range(N):
            C[i, j] = float(v[i] @ v[j]) / (math.sqrt(v[i] @ v[i]) * math.sqrt(v[j] @ v[j]))
    return C


def ref_B(C, K, S):
    B = np.empty((K, K))
    for l in range(K):
        for m in range(K):
            vals = [C[l * S + s, m * S + t] for s in range(S) for t in range(S) if s != t]
            B[l, m] = sum(vals) / len(vals)
    return B


def ref_D(C, K, S):
    D = np.empty((S, S))
    for s in range(S):
        for t in range(S):
            vals = [C[l * S + s, m * S + t] for l in range(K) for m in range(K) if l != m]
            D[s, t] = sum(vals) / len(vals)
    return D


def ref_diag_minus_off(X):
    n = len(X)
    diag = [X[i, i] for i in range(n)]
    off = [X[i, j] for i in range(n) for j in range(n) if i != j]
    return sum(diag) / len(diag) - sum(off) / len(off)


def ref_lrds(C, K, S):
    return ref_diag_minus_off(ref_B(C, K, S))


def ref_sads(C, K, S):
    return ref_diag_minus_off(ref_D(C, K, S))


def ref_key_scores(a):
    """score[l, layer, k] = 2/(S(S-1)) sum_{s<s'} x[l,s,k] x[l,s',k], x = v/||v||, pair by pair."""
    K, S, L, F = a.shape
    out = np.zeros((K, L * F))
    for l in range(K):
        x = [a[l, s].ravel() / np.linalg.norm(a[l, s].ravel()) for s in range(S)]
        for s, t in itertools.combinations(range(S), 2):
            out[l] += x[s] * x[t]
        out[l] *= 2.0 / (S * (S - 1))
    return out.reshape(K, L, F)


def ref_z(score, scale=None):
    """z across languages, ddof = 0; std within 1e-9 * scale (default max_l |score|) counts as 0."""
    K = score.shape[0]
    flat = score.reshape(K, -1)
    scale = None if scale is None else np.asarray(scale).ravel()
    z = np.zeros_like(flat)
    for k in range(flat.shape[1]):
        col = flat[:, k]
        mu = sum(col) / K
        sd = math.sqrt(sum((c - mu) ** 2 for c in col) / K)
        if sd > 1e-9 * (max(abs(c) for c in col) if scale is None else scale[k]):
            z[:, k] = (col - mu) / sd
    return z.reshape(score.shape)


def ref_term_scale(a):
    """max_l of ((sum_s x)^2 + sum_s x^2) / (S(S-1)), the size of the terms that make a score."""
    K, S, L, F = a.shape
    out = np.zeros(L * F)
    for l in range(K):
        x = [a[l, s].ravel() / np.linalg.norm(a[l, s].ravel()) for s in range(S)]
        sx, sx2 = sum(x), sum(xi * xi for xi in x)
        out = np.maximum(out, (sx * sx + sx2) / (S * (S - 1)))
    return out


def ref_weighted_stats(C, K, S, idx):
    """LRDS and SADS of a bootstrap resample idx (S,) by loops; pairs with idx equal are same-meaning."""
    n = len(idx)
    within, cross, same = [], [], []
    for l in range(K):
        for m in range(K):
            for i in range(n):
                for j in range(n):
                    c = C[l * S + idx[i], m * S + idx[j]]
                    if idx[i] != idx[j]:
                        (within if l == m else cross).append(c)
                    elif i == j and l != m:
                        same.append(c)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(within) - mean(cross), mean(same) - mean(cross)


def authors_block_score(C, block):
    """The release's similarity_by_block + compare_similarity_diagnal: block means with each block's
    diagonal masked, then diagonal mean minus off-diagonal mean."""
    n = C.shape[0] // block
    A = np.empty((n, n))
    mask = ~np.eye(block, dtype=bool)
    for i in range(n):
        for j in range(n):
            A[i, j] = C[i * block : (i + 1) * block, j * block : (j + 1) * block][mask].mean()
    return ref_diag_minus_off(A)


def authors_meaning_order(K, S):
    """The release's rearrange_by_meaning: stride S+1 over the language-major list."""
    N = K * S
    return [j for i in range(S + 1) for j in range(i, N, S + 1)]


# --------------------------------------------------------------------------- random grids


@st.composite
def grids(draw, min_K=2):
    K = draw(st.integers(min_K, 6))
    S = draw(st.integers(2, 7))
    L = draw(st.integers(1, 3))
    F = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    signed = draw(st.booleans())
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(K, S, L, F))
    if not signed:  # post-GELU-like, mostly non-negative activations: cosines near 1
        a = np.abs(a) + 0.1 * rng.random((K, S, L, F))
    return a


PROP = settings(max_examples=40, deadline=None)
close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)  # noqa: E731


# --------------------------------------------------------------------------- cosine, B, D, LRDS, SADS


@PROP
@given(grids())
def test_scores_match_reference(a):
    K, S, L, _ = a.shape
    grams, _, _ = reduce_stats(a)
    C_ref = ref_cosine(a)
    close(M.cosine_from_gram(grams.sum(0), K, S), C_ref)
    r = M.scores_from_grams(grams, K, S)
    close(r["B"], ref_B(C_ref, K, S))
    close(r["D"], ref_D(C_ref, K, S))
    close(r["lrds"], ref_lrds(C_ref, K, S))
    close(r["sads"], ref_sads(C_ref, K, S))
    for i in range(L):
        C_i = ref_cosine(a[:, :, i : i + 1, :])
        close(r["lrds_per_layer"][i], ref_lrds(C_i, K, S))
        close(r["sads_per_layer"][i], ref_sads(C_i, K, S))


@PROP
@given(grids())
def test_layer_shares_and_balanced_match_reference(a):
    K, S, L, _ = a.shape
    grams, _, _ = reduce_stats(a)
    sq = np.array([[np.sum(a[l, s, i] ** 2) for l in range(K) for s in range(S)] for i in range(L)])
    close(M.layer_norm_shares(grams), sq.sum(1) / sq.sum())
    # balanced: each layer's vector scaled to unit length, then concatenated
    bal = a / np.linalg.norm(a, axis=-1, keepdims=True)
    C_bal = ref_cosine(bal)
    r = M.scores_from_grams(grams, K, S)
    close(r["lrds_balanced"], ref_lrds(C_bal, K, S))
    close(r["sads_balanced"], ref_sads(C_bal, K, S))
    # the all-layer cosine is the per-layer cosines weighted by norm products (docs/metrics.md)
    n = np.sqrt(np.stack([np.diagonal(g) for g in grams]))  # (L, N)
    C_layers = np.stack([M.cosine_from_gram(g, K, S) for g in grams])
    w = n[:, :, None] * n[:, None, :] / np.sqrt(np.outer(sq.sum(0), sq.sum(0)))
    close((w * C_layers).sum(0), M.cosine_from_gram(grams.sum(0), K, S))


def test_balanced_gram_skips_zero_layer_of_a_unit():
    rng = np.random.default_rng(3)
    K, S = 2, 3
    a = rng.random((K, S, 2, 4)) + 0.1
    a[1, 2, 0] = 0.0  # unit (1, 2) is silent in layer 0
    grams, _, _ = reduce_stats(a)
    G = M.balanced_gram(grams)
    row = 1 * S + 2
    assert G[row, row] == pytest.approx(1.0)  # only layer 1 contributes
    x = a[:, :, 1, :] / np.linalg.norm(a[:, :, 1, :], axis=-1, keepdims=True)
    assert G[0, row] == pytest.approx(x[0, 0] @ x[1, 2])  # layer 0 adds nothing for this unit
    with pytest.raises(ValueError, match=r"language index 1, unit index 2.*layer 0"):
        M.scores_from_grams(grams, K, S)  # the per-layer cosine of layer 0 is undefined there


@PROP
@given(grids(), st.data())
def test_scaling_units_changes_nothing(a, data):
    K, S, L, F = a.shape
    seed = data.draw(st.integers(0, 2**31 - 1))
    c = np.exp(np.random.default_rng(seed).uniform(-3, 3, size=(K, S, 1, 1)))
    g1, sx1, sq1 = reduce_stats(a)
    g2, sx2, sq2 = reduce_stats(a * c)
    r1, r2 = M.scores_from_grams(g1, K, S), M.scores_from_grams(g2, K, S)
    for key in ("lrds", "sads", "lrds_balanced", "sads_balanced", "lrds_per_layer", "sads_per_layer", "B", "D"):
        close(r1[key], r2[key])
    (s1, z1), (s2, z2) = M.key_neuron_zscores(sx1, sq1, S), M.key_neuron_zscores(sx2, sq2, S)
    close(s1, s2)
    tau = 0.5 * math.sqrt(K - 1)
    clear = np.abs(z1 - tau) > 1e-6  # masks compared away from the threshold itself
    assert np.array_equal(M.key_neuron_masks(z1, tau)[clear], M.key_neuron_masks(z2, tau)[clear])


@PROP
@given(grids(), st.data())
def test_permuting_languages_permutes_everything(a, data):
    K, S, L, F = a.shape
    perm = np.array(data.draw(st.permutations(range(K))))
    g1, sx1, sq1 = reduce_stats(a)
    g2, sx2, sq2 = reduce_stats(a[perm])
    r1, r2 = M.scores_from_grams(g1, K, S), M.scores_from_grams(g2, K, S)
    close(r2["lrds"], r1["lrds"])
    close(r2["sads"], r1["sads"])
    close(r2["B"], r1["B"][np.ix_(perm, perm)])
    z1 = M.key_neuron_zscores(sx1, sq1, S)[1]
    z2 = M.key_neuron_zscores(sx2, sq2, S)[1]
    close(z2, z1[perm])
    tau = 0.5 * math.sqrt(K - 1)
    clear = np.abs(z1[perm] - tau) > 1e-6
    assert np.array_equal(M.key_neuron_masks(z2, tau)[clear], M.key_neuron_masks(z1, tau)[perm][clear])


def test_meaning_major_order_and_the_stride_bug():
    K, S = 3, 4
    order = M.meaning_major_order(K, S)
    assert order.tolist() == [l * S + s for s in range(S) for l in range(K)]
    assert sorted(authors_meaning_order(K, S)) == list(range(K * S))  # a permutation, but the wrong one
    # Strong meaning structure: unit s has its own direction, shared by every language.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, S, 1, 16)) * 3 + 0.3 * rng.normal(size=(K, S, 1, 16))
    C = ref_cosine(a)
    ours = M.sads(C, K, S)
    # The release's own block procedure on the correct order gives exactly our SADS ...
    assert authors_block_score(C[np.ix_(order, order)], K) == pytest.approx(ours, rel=1e-12)
    # ... and on its stride-(S+1) order a different number: its "meaning blocks" mix meanings.
    bug = authors_meaning_order(K, S)
    buggy = authors_block_score(C[np.ix_(bug, bug)], K)
    assert ours > 0.5 and abs(buggy - ours) > 0.3
    # LRDS: the release's language blocks (block size S, diagonal masked) are our B.
    assert authors_block_score(C, S) == pytest.approx(M.lrds(C, K, S), rel=1e-12)


def test_zero_norm_unit_is_named():
    a = np.random.default_rng(1).random((3, 4, 2, 5)) + 0.1
    a[2, 1] = 0.0
    K, S = 3, 4
    grams = np.stack([a[:, :, i].reshape(12, 5) @ a[:, :, i].reshape(12, 5).T for i in range(2)])
    with pytest.raises(ValueError, match=r"row 9 \(language index 2, unit index 1\)"):
        M.cosine_from_gram(grams.sum(0), K, S)
    with pytest.raises(ValueError, match=r"language index 2, unit index 1"):
        M.unit_norms(grams, K, S)
    with pytest.raises(ValueError, match=r"language index 2, unit index 1"):
        M.neuron_sums(a[:, :, 0], np.where(np.arange(12).reshape(3, 4) == 9, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(12, 12\)"):
        M.cosine_from_gram(grams.sum(0)[:11, :11], K, S)


# --------------------------------------------------------------------------- key neurons


@PROP
@given(grids())
def test_key_scores_match_pairwise_reference(a):
    K, S, L, F = a.shape
    grams, sx, sq = reduce_stats(a)
    score = M.key_neuron_scores(sx, sq, S)
    close(score, ref_key_scores(a))
    # METHOD.md: the scores of a language sum to its diagonal language block, B[l, l]
    B = M.language_block_means(M.cosine_from_gram(grams.sum(0), K, S), K, S)
    close(score.sum(axis=(1, 2)), np.diagonal(B))
    close(M.zscores(score), ref_z(score))
    score2, z = M.key_neuron_zscores(sx, sq, S)
    assert np.array_equal(score2, score)
    z_ref = ref_z(score, ref_term_scale(a))
    close(z, z_ref)
    tau = 0.6 * math.sqrt(K - 1)
    mask = M.key_neuron_masks(z, tau)
    assert mask.dtype == bool and mask.shape == (K, L, F)
    clear = np.abs(z_ref - tau) > 1e-6
    assert np.array_equal(mask[clear], (z_ref > tau)[clear])
    assert np.array_equal(M.key_counts(mask), mask.sum(-1))


def test_tau_at_or_above_sqrt_k_minus_1_is_an_error():
    z = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"sqrt\(K-1\) = 2\.0000"):
        M.key_neuron_masks(z, 2.0)  # K = 5: z <= 2, so z > 2 is impossible
    M.key_neuron_masks(np.zeros((6, 2, 3)), 2.0)  # K = 6: sqrt(5) > 2, allowed
    # the bound is attained: one language apart from the rest
    score = np.zeros((5, 1, 1))
    score[3] = 1.0
    assert M.zscores(score)[3, 0, 0] == pytest.approx(2.0)


def test_constant_neuron_is_never_key_and_warns_nothing():
    K = 7
    score = np.random.default_rng(0).normal(size=(K, 2, 4))
    score[:, 0, 1] = 0.1  # mean of seven 0.1s is not exactly 0.1 in floating point
    score[:, 1, 2] = 0.0  # a dead neuron
    score[:, 1, 3] = 0.3 * (1 + 1e-15 * np.arange(K))  # equal up to rounding
    score[0, 1, 3] = 0.3
    score[3, 0, 0] = 50.0  # clearly key, as a check that the mask is not empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = M.zscores(score)
        mask = M.key_neuron_masks(z, 2.0)
    for layer, k in ((0, 1), (1, 2), (1, 3)):
        assert np.all(z[:, layer, k] == 0) and not mask[:, layer, k].any()
    assert mask[3, 0, 0]


@PROP
@given(grids(), st.sampled_from([0.05, 0.2, 0.5, 1.0]))
def test_top_fraction_masks(a, fraction):
    K, S, L, F = a.shape
    _, sx, sq = reduce_stats(a)
    z = M.key_neuron_zscores(sx, sq, S)[1]
    mask = M.top_fraction_masks(z, fraction)
    n_top = int(math.floor(fraction * L * F + 1e-9))
    for l in range(K):
        flat = z[l].ravel()
        ranked = sorted(range(L * F), key=lambda i: (-flat[i], i))[:n_top]
        expect = np.zeros(L * F, dtype=bool)
        expect[[i for i in ranked if flat[i] > 0]] = True
        assert np.array_equal(mask[l].ravel(), expect)


def test_top_fraction_ties_are_deterministic():
    z = np.zeros((2, 1, 6))
    z[0, 0, [1, 3, 4]] = 1.0  # three-way tie for two places: lowest indices win
    z[1] = -z[0]
    mask = M.top_fraction_masks(z, 2 / 6)
    assert mask[0, 0].tolist() == [False, True, False, True, False, False]
    assert not mask[1].any()  # only z > 0 is ever taken
    z = np.full((2, 4, 50), 0.5)
    z.reshape(2, -1)[:, ::3] = 2.0  # 67 tied at the top of 200, 20 places
    z[1] = -z[1]
    mask = M.top_fraction_masks(z, 0.1)
    assert np.flatnonzero(mask[0]).tolist() == list(range(0, 60, 3)) and not mask[1].any()


# --------------------------------------------------------------------------- bootstrap and permutation internals


@PROP
@given(grids(), st.data())
def test_bootstrap_statistic_matches_resample_loops(a, data):
    K, S, _, _ = a.shape
    idx = np.array(data.draw(st.lists(st.integers(0, S - 1), min_size=S, max_size=S)))
    if len(set(idx.tolist())) < 2:
        idx[0] = (idx[1] + 1) % S
    C = ref_cosine(a)
    w = np.bincount(idx, minlength=S).astype(float)[None, :]
    C_all, C_in = U._summaries(C, K, S)
    lr, sa = U._weighted_scores(C_all, C_in, K, S, w)
    ref = ref_weighted_stats(C, K, S, idx)
    close([lr[0], sa[0]], ref)
    one = U._weighted_scores(C_all, C_in, K, S, np.ones((1, S)))  # no resampling: the data
    close([one[0][0], one[1][0]], [ref_lrds(C, K, S), ref_sads(C, K, S)])


@PROP
@given(grids(), st.data())
def test_permutation_nulls_match_explicit_relabelling(a, data):
    K, S, _, _ = a.shape
    C = ref_cosine(a)
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pi = rng.permuted(np.tile(np.arange(K), (3, S, 1)), axis=-1)
    sigma = rng.permuted(np.tile(np.arange(S), (3, K, 1)), axis=-1)
    lr, sa = U._lrds_null(C, K, S, pi), U._sads_null(C, K, S, sigma)
    for r in range(3):
        # LRDS null: row (l, s) of the relabelled matrix is row (pi[s, l], s) of C
        rows = [pi[r, s, l] * S + s for l in range(K) for s in range(S)]
        close(lr[r], ref_lrds(C[np.ix_(rows, rows)], K, S))
        # SADS null: row (l, s) of the re-aligned matrix is row (l, sigma[l, s]) of C
        rows = [l * S + sigma[r, l, s] for l in range(K) for s in range(S)]
        close(sa[r], ref_sads(C[np.ix_(rows, rows)], K, S))
