"""evolution.py: shares, intervals, tests and overlaps against independent references (scipy, loops, sets)."""

from __future__ import annotations

import math
import weakref
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from lingua_ray import evolution as E


# ---------------------------------------------------------------- which layers


@pytest.mark.parametrize("L,k,want", [(1, 3, 1), (2, 3, 1), (3, 3, 1), (4, 3, 1), (5, 3, 2), (6, 3, 2), (7, 3, 3),
                                      (8, 3, 3), (36, 3, 3), (4, 1, 1), (36, 10, 10), (9, 10, 4)])
def test_edge_k_keeps_a_middle(L, k, want):
    assert E.edge_k(k, L) == want
    parts = E.edge_layers(want, L)
    assert parts["first"] == list(range(want)) and parts["last"] == list(range(L - want, L))
    if L >= 3:
        assert not set(parts["first"]) & set(parts["last"]) and len(parts["ends"]) < L  # a middle remains
    else:
        assert parts["ends"] == list(range(L))


def test_edge_k_refuses_nonsense():
    with pytest.raises(ValueError, match="k must be >= 1"):
        E.edge_k(0, 8)


# ---------------------------------------------------------------- binomial interval and test


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 400), frac=st.floats(0, 1), p0=st.floats(0.01, 0.99))
def test_binomial_p_value_matches_scipy(n, frac, p0):
    x = round(frac * n)
    want = binomtest(x, n, p0).pvalue
    assert math.isclose(E.binomial_p_value(x, n, p0), want, rel_tol=1e-6, abs_tol=1e-12)


def test_binomial_p_value_exact_small_case():
    # by hand with exact fractions: n = 6, p0 = 1/4, x = 4
    n, p0, x = 6, Fraction(1, 4), 4
    pmf = [math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i) for i in range(n + 1)]
    want = float(sum(p for p in pmf if p <= pmf[x]))
    assert math.isclose(E.binomial_p_value(x, n, 0.25), want, rel_tol=1e-12)


def test_binomial_p_value_large_n_and_edges():
    assert math.isclose(E.binomial_p_value(25_300, 100_000, 0.25), binomtest(25_300, 100_000, 0.25).pvalue,
                        rel_tol=1e-5)
    assert E.binomial_p_value(0, 0, 0.5) is None
    assert E.binomial_p_value(5, 5, 1.0) == 1.0 and E.binomial_p_value(4, 5, 1.0) == 0.0


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 500), frac=st.floats(0, 1), level=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_interval_matches_scipy(n, frac, level):
    x = round(frac * n)
    lo, hi = E.wilson_interval(x, n, level)
    ref = binomtest(x, n, 0.5).proportion_ci(confidence_level=level, method="wilson")
    assert math.isclose(lo, ref.low, abs_tol=1e-9) and math.isclose(hi, ref.high, abs_tol=1e-9)
    assert 0 <= lo <= x / n <= hi <= 1
    assert E.wilson_interval(0, 0, level) is None


def test_share_stat_without_key_neurons_is_undefined():
    s = E.share_stat(0, 0, 0.25, 0.95)
    assert s == {"count": 0, "share": None, "uniform": 0.25, "ci": None, "p_value": None}


# ---------------------------------------------------------------- the section, against loops


def _entries(masks: list[np.ndarray], langs: list[str], rng) -> list[dict]:
    out = []
    for c, m in enumerate(masks):
        L = m.shape[1]
        out.append({"label": f"c{c}", "step": 10 * c,
                    "per_layer": {"lrds": [{"value": float(v)} for v in rng.normal(size=L)],
                                  "sads": [{"value": float(v)} for v in rng.normal(size=L)]},
                    "key_neurons": {"counts": {l: [int(m[i, j].sum()) for j in range(L)] for i, l in enumerate(langs)}}})
    return out


def _random_masks(C, K, L, F, rng, p=0.2) -> list[np.ndarray]:
    # a per-layer density so the ends differ from the middle
    dens = rng.uniform(0.02, p * 2, size=(1, L, 1))
    return [rng.random((K, L, F)) < dens for _ in range(C)]


@pytest.mark.parametrize("C,K,L,F,k", [(4, 3, 8, 10, 3), (3, 2, 4, 6, 3), (2, 2, 2, 5, 3), (1, 2, 5, 4, 2),
                                       (5, 4, 12, 7, 1)])
def test_summarise_matches_naive_loops(C, K, L, F, k):
    rng = np.random.default_rng(C * 100 + L)
    langs = [f"x{i}" for i in range(K)]
    masks = _random_masks(C, K, L, F, rng)
    masks[-1][0] = False  # one language with no key neurons at the last checkpoint: shares undefined
    entries = _entries(masks, langs, rng)
    ev = E.summarise(entries, lambda label: masks[int(label[1:])], langs, k=k, level=0.9)
    kk = E.edge_k(k, L)
    assert ev["checkpoints"] == [e["label"] for e in entries] and ev["k"] == kk and ev["k_requested"] == k
    for layer in range(L):
        for c in range(C):
            assert ev["per_layer_lrds"][layer][c] == entries[c]["per_layer"]["lrds"][layer]["value"]
            assert ev["per_layer_sads"][layer][c] == entries[c]["per_layer"]["sads"][layer]["value"]
            for i, l in enumerate(langs):
                assert ev["key_counts"][l][layer][c] == int(masks[c][i, layer].sum())
    first, last = set(range(kk)), set(range(L - kk, L))
    for c in range(C):
        pooled_n = pooled_first = 0
        for i, l in enumerate(langs):
            pos = [(layer, f) for layer in range(L) for f in range(F) if masks[c][i, layer, f]]
            n = len(pos)
            n_first = sum(1 for layer, _ in pos if layer in first)
            n_last = sum(1 for layer, _ in pos if layer in last)
            n_ends = sum(1 for layer, _ in pos if layer in first | last)
            es = ev["edge_share"][l][c]
            assert es["n_key"] == n
            for part, cnt, nl in (("first", n_first, len(first)), ("last", n_last, len(last)),
                                  ("ends", n_ends, len(first | last))):
                s = es[part]
                assert s["count"] == cnt and s["uniform"] == nl / L
                if n == 0:
                    assert s["share"] is None and s["ci"] is None and s["p_value"] is None
                else:
                    assert s["share"] == cnt / n
                    ref = binomtest(cnt, n, 0.5).proportion_ci(confidence_level=0.9, method="wilson")
                    assert np.allclose(s["ci"], [ref.low, ref.high], atol=1e-9)
                    if nl < L:
                        assert math.isclose(s["p_value"], binomtest(cnt, n, nl / L).pvalue, rel_tol=1e-6)
            pooled_n += n
            pooled_first += n_first
        assert ev["edge_share_pooled"][c]["n_key"] == pooled_n
        assert ev["edge_share_pooled"][c]["first"]["count"] == pooled_first
    for i, l in enumerate(langs):
        assert len(ev["jaccard"][l]) == C - 1
        for c in range(C - 1):
            A = {(a, b) for a, b in zip(*np.nonzero(masks[c][i]))}
            B = {(a, b) for a, b in zip(*np.nonzero(masks[c + 1][i]))}
            want = None if not A | B else len(A & B) / len(A | B)
            assert ev["jaccard"][l][c] == want
            a = masks[c][i].sum(1)
            b = masks[c + 1][i].sum(1)
            e_inter = sum(a[j] * b[j] / F for j in range(L))
            union = a.sum() + b.sum() - e_inter
            assert ev["jaccard_chance"][l][c] == pytest.approx(None if union == 0 else e_inter / union)


def test_jaccard_chance_is_what_random_sets_share():
    # Monte Carlo check of the formula: random sets with fixed per-layer sizes
    rng = np.random.default_rng(0)
    L, F = 4, 200
    a, b = np.array([20, 5, 40, 80]), np.array([30, 10, 40, 60])
    inter = union = 0
    for _ in range(400):
        A = np.zeros((L, F), bool)
        B = np.zeros((L, F), bool)
        for j in range(L):
            A[j, rng.choice(F, a[j], replace=False)] = True
            B[j, rng.choice(F, b[j], replace=False)] = True
        inter += (A & B).sum()
        union += (A | B).sum()
    assert E.jaccard_chance(a, b, F) == pytest.approx(inter / union, rel=0.02)


def test_identical_masks_overlap_fully_and_masks_none_skips_only_jaccard():
    rng = np.random.default_rng(1)
    langs = ["en", "fr"]
    m = _random_masks(1, 2, 6, 8, rng)[0]
    masks = [m, m.copy(), _random_masks(1, 2, 6, 8, rng)[0]]
    entries = _entries(masks, langs, rng)
    ev = E.summarise(entries, lambda label: masks[int(label[1:])], langs)
    assert [ev["jaccard"][l][0] for l in langs] == [1.0, 1.0]
    assert all(j < 1 for l in langs for j in ev["jaccard"][l][1:])
    bare = E.summarise(entries, None, langs)
    assert bare["jaccard"] is None and bare["jaccard_chance"] is None
    assert {k: v for k, v in bare.items() if not k.startswith("jaccard")} == \
        {k: v for k, v in ev.items() if not k.startswith("jaccard")}


def test_only_two_masks_are_alive_at_a_time():
    rng = np.random.default_rng(2)
    langs = ["a", "b"]
    masks = _random_masks(6, 2, 5, 16, rng)
    entries = _entries(masks, langs, rng)
    refs, alive_at_call = [], []

    def load(label):
        alive_at_call.append(sum(r() is not None for r in refs))
        m = masks[int(label[1:])].copy()  # a fresh array the caller alone holds
        refs.append(weakref.ref(m))
        return m

    E.summarise(entries, load, langs)
    assert alive_at_call == [0] + [1] * 5  # the previous checkpoint's mask only


@pytest.mark.parametrize("bad,match", [
    (lambda m: m[:, :3], r"'c1' has shape \(2, 3, 6\), want \(K=2, L=5, F\)"),
    (lambda m: m.astype(np.int8), "'c1' is int8, want bool"),
    (lambda m: np.logical_not(m), "'c1' has per-layer counts .* re-run reduce"),
])
def test_bad_masks_name_the_checkpoint(bad, match):
    rng = np.random.default_rng(3)
    langs = ["a", "b"]
    masks = _random_masks(2, 2, 5, 6, rng)
    entries = _entries(masks, langs, rng)
    with pytest.raises(ValueError, match=match):
        E.summarise(entries, lambda label: bad(masks[1]) if label == "c1" else masks[0], langs)


def test_summarise_refuses_mixed_layer_counts_and_empty_input():
    rng = np.random.default_rng(4)
    entries = _entries([_random_masks(1, 2, 4, 5, rng)[0], _random_masks(1, 2, 5, 5, rng)[0]], ["a", "b"], rng)
    with pytest.raises(ValueError, match="'c1' does not have L = 4 layers"):
        E.summarise(entries, None, ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        E.summarise([], None, ["a", "b"])


# ---------------------------------------------------------------- identical checkpoints


def test_identical_checkpoints_groups_equal_hashes_in_order():
    fps = {"s0": {"weights_sha256": "aa", "config_sha256": "x"}, "s1": {"weights_sha256": "bb"},
           "s2": {"weights_sha256": "aa"}, "s3": {"weights_sha256": None}, "s4": {}, "s5": {"weights_sha256": "bb"},
           "s6": {"weights_sha256": "cc"}, "s7": {"weights_sha256": "aa"}}
    assert E.identical_checkpoints(fps) == [["s0", "s2", "s7"], ["s1", "s5"]]
    assert E.identical_checkpoints({"a": {"weights_sha256": "1"}, "b": {"weights_sha256": "2"}}) == []
    msg = E.identical_message([["s0", "s2"], ["s1", "s5"]])
    assert "s0 = s2; s1 = s5" in msg and "weights_sha256" in msg
    assert E.identical_message([]) == ""
