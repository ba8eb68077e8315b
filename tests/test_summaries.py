"""Streamed summaries (lingua_ray.summaries + reduce.checkpoint_scores) equal the (N, N) Gram path.

The naive reference is metrics.scores_from_grams / uncertainty.bootstrap_ci /
uncertainty.permutation_test on float64 per-layer Grams, built here as reduce.layer_gram does.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_ray import metrics as M
from lingua_ray import summaries as Sm
from lingua_ray import uncertainty as U
from lingua_ray.reduce import CheckpointSums, checkpoint_scores

TOL = 1e-9
PROP = settings(max_examples=30, deadline=None)


def grid_array(K, S, L, F, seed, zero_layers=0.0):
    """a (K, S, L, F) float32: non-negative noise, a shared meaning part, a language offset."""
    rng = np.random.default_rng(seed)
    a = np.abs(rng.normal(size=(K, S, L, F))) + rng.normal(size=(1, S, L, F)) ** 2
    a += np.abs(rng.normal(size=(K, 1, L, F)))
    if zero_layers:
        dead = rng.random((K, S, L)) < zero_layers
        dead[..., 0] = False  # every unit keeps one live layer: ν > 0
        a[dead] = 0.0
    return a.astype(np.float32)


def reference_grams(a):
    """(L, N, N) float64, as reduce.layer_gram: float32 data cast to float64 before the product."""
    K, S, L, F = a.shape
    A = a.astype(np.float64).reshape(K * S, L, F)
    return np.einsum("ilf,jlf->lij", A, A)


def streamed(a, block=None, **settings_):
    """(plan, results) of the streamed path, a layer read through in-memory block readers."""
    K, S, L, F = a.shape
    plan = Sm.make_plan(K, S, F, **settings_)
    if block is not None:
        plan = dataclasses.replace(plan, block=block)
    readers = [lambda s0, s1, i=i: a[:, s0:s1, i, :] for i in range(L)]
    norms = Sm.Norms.from_layers(Sm.layer_sq_norms(r, plan) for r in readers)
    summaries = (Sm.layer_summary(r, i, plan, norms) for i, r in enumerate(readers))
    return plan, checkpoint_scores(summaries, plan, norms)


def close(x, y, tol=TOL):
    np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=0, atol=tol)


def assert_scores_equal(res, grams, K, S):
    ref = M.scores_from_grams(grams, K, S)
    assert set(ref) == set(res["scores"])
    for key, value in ref.items():
        close(res["scores"][key], value)


def assert_boot_equal(res_boot, ref_boot, scopes):
    for scope in scopes:
        for name in ("lrds", "sads"):
            got, want = res_boot[scope][name], ref_boot[scope][name]
            for f in ("estimate", "lo", "hi"):
                close(getattr(got, f), getattr(want, f))


def assert_perm_equal(res_perm, ref_perm, scopes):
    for scope in scopes:
        for name in ("lrds", "sads"):
            got, want = res_perm[scope][name], ref_perm[scope][name]
            close(got.observed, want.observed)
            close(got.null, want.null)
            assert np.array_equal(np.asarray(got.p_value), np.asarray(want.p_value)), (scope, name)


@st.composite
def grids(draw):
    K, S = draw(st.integers(2, 5)), draw(st.integers(2, 9))
    L, F = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    return K, S, L, F, draw(st.integers(1, S)), draw(st.integers(0, 10**6))


@PROP
@given(grids())
def test_scores_intervals_and_tests_equal_the_gram_path(grid):
    K, S, L, F, block, seed = grid
    a = grid_array(K, S, L, F, seed)
    plan, res = streamed(a, block=block, n_boot=50, n_perm=40, seed=seed % 7)
    assert plan.S_p == S  # K·S fits perm_max_rows: the tests use every unit
    grams = reference_grams(a)
    assert_scores_equal(res, grams, K, S)
    scopes = ("overall", "balanced", "per_layer")
    assert_boot_equal(res["bootstrap"], U.bootstrap_ci(grams, K, S, n_boot=50, seed=seed % 7, per_layer=True), scopes)
    assert_perm_equal(res["permutation"], U.permutation_test(grams, K, S, n_perm=40, seed=seed % 7, per_layer=True),
                      scopes)
    v = a.astype(np.float64).reshape(K, S, L * F)
    x = (v / np.linalg.norm(v, axis=2, keepdims=True)).reshape(K, S, L, F)
    close(res["sum_x"], x.sum(1), 1e-12)
    close(res["sum_x2"], (x * x).sum(1), 1e-12)


@PROP
@given(grids())
def test_units_with_silent_layers_match_the_balanced_gram(grid):
    """Some units are all zero in some layers: per-layer cosines are undefined, the balanced scope
    drops those layers for those units (metrics.balanced_gram); c varies, so it is summed directly."""
    K, S, L, F, block, seed = grid
    a = grid_array(K, S, max(L, 2), F, seed, zero_layers=0.4)
    L = a.shape[2]
    plan, res = streamed(a, block=block, n_boot=30, n_perm=30, per_layer=False)
    grams = reference_grams(a)
    ref_bal = M.cosine_from_gram(M.balanced_gram(grams), K, S)
    close(res["scores"]["lrds_balanced"], M.lrds(ref_bal, K, S))
    close(res["scores"]["sads_balanced"], M.sads(ref_bal, K, S))
    C = M.cosine_from_gram(grams.sum(0), K, S)
    close(res["scores"]["lrds"], M.lrds(C, K, S))
    close(res["scores"]["B"], M.language_block_means(C, K, S))
    close(res["scores"]["D"], M.meaning_block_means(C, K, S))
    assert "lrds_per_layer" not in res["scores"]
    scopes = ("overall", "balanced")
    assert_boot_equal(res["bootstrap"], U.bootstrap_ci(grams, K, S, n_boot=30, seed=0, per_layer=False), scopes)
    assert_perm_equal(res["permutation"], U.permutation_test(grams, K, S, n_perm=30, seed=0), scopes)


def test_a_silent_layer_fails_per_layer_scores_by_name():
    a = grid_array(3, 6, 2, 4, 0)
    a[1, 4, 1] = 0.0
    with pytest.raises(ValueError, match=r"language index 1, unit index 4 \[layer 1\]"):
        streamed(a, block=2, n_boot=5, n_perm=5)
    with pytest.raises(ValueError, match=r"row 10 \(language index 1, unit index 4\) \[layer 1\]"):
        M.scores_from_grams(reference_grams(a), 3, 6)  # the reference refuses the same unit


def test_a_zero_unit_vector_is_an_error():
    a = grid_array(3, 5, 2, 4, 0)
    a[2, 3] = 0.0
    with pytest.raises(ValueError, match="language index 2, unit index 3"):
        streamed(a, n_boot=5, n_perm=5)


def test_blocks_do_not_change_the_numbers():
    a = grid_array(4, 11, 2, 7, 3)
    runs = [streamed(a, block=b, n_boot=40, n_perm=40)[1] for b in (1, 3, 11)]
    for r in runs[1:]:
        for key in runs[0]["scores"]:
            close(r["scores"][key], runs[0]["scores"][key], 1e-13)
        close(r["sum_x"], runs[0]["sum_x"], 1e-14)
        close(r["bootstrap"]["per_layer"]["sads"].lo, runs[0]["bootstrap"]["per_layer"]["sads"].lo, 1e-13)
        assert r["permutation"]["overall"]["lrds"].p_value == runs[0]["permutation"]["overall"]["lrds"].p_value


@pytest.mark.parametrize("K,S", [(2, 40), (33, 3), (17, 32), (40, 20)])
def test_every_null_route_equals_the_gram_path(K, S):
    """scores._gather_sum has three routes (few groups: BLAS; large groups: block gathers; else a
    flat gather). LRDS has K groups of S rows, SADS S groups of K: these grids take each route."""
    a = grid_array(K, S, 2, 3, K + S)
    _, res = streamed(a, block=7, n_boot=10, n_perm=30, seed=2)
    grams = reference_grams(a)
    assert_perm_equal(res["permutation"], U.permutation_test(grams, K, S, n_perm=30, seed=2, per_layer=True),
                      ("overall", "balanced", "per_layer"))


def test_permutation_subsample_is_an_exact_test_on_those_units():
    """K·S > perm_max_rows: the tests run on a seeded subsample; on it they equal the reference."""
    K, S, L, F = 3, 20, 2, 5
    a = grid_array(K, S, L, F, 11)
    plan, res = streamed(a, block=6, n_boot=20, n_perm=60, seed=4, perm_max_rows=24)
    assert plan.S_p == 8 and list(plan.perm_units) == sorted(set(plan.perm_units))
    assert plan.perm_units == Sm.make_plan(K, S, F, seed=4, perm_max_rows=24).perm_units  # seeded
    assert plan.perm_units != Sm.make_plan(K, S, F, seed=5, perm_max_rows=24).perm_units
    sub = a[:, list(plan.perm_units)]
    ref = U.permutation_test(reference_grams(sub), K, plan.S_p, n_perm=60, seed=4, per_layer=True)
    assert_perm_equal(res["permutation"], ref, ("overall", "balanced", "per_layer"))
    assert res["permutation"]["n_units"] == 8 and res["permutation"]["units"] == list(plan.perm_units)
    assert_scores_equal(res, reference_grams(a), K, S)  # scores and intervals still use every unit


def test_layers_combine_in_any_order_once_each():
    K, S, L, F = 3, 6, 3, 4
    a = grid_array(K, S, L, F, 2)
    plan = Sm.make_plan(K, S, F, n_boot=10, n_perm=10)
    readers = [lambda s0, s1, i=i: a[:, s0:s1, i, :] for i in range(L)]
    norms = Sm.Norms.from_layers(Sm.layer_sq_norms(r, plan) for r in readers)
    parts = [Sm.layer_summary(r, i, plan, norms) for i, r in enumerate(readers)]
    sums = CheckpointSums(plan, norms)
    for i in (2, 0):
        sums.add(parts[i])
    with pytest.raises(ValueError, match="layers \\[1\\] were never added"):
        sums.results()
    with pytest.raises(ValueError, match="added twice"):
        sums.add(parts[0])
    sums.add(parts[1])
    assert_scores_equal(sums.results(), reference_grams(a), K, S)
    # Nothing kept is a view of an added summary: under Ray that view would pin the whole summary.
    kept, added = sums.per_layer[1], parts[1].per_layer
    assert not np.shares_memory(kept.lrds_perm.null, added.lrds_perm.null)
    assert not np.shares_memory(kept.sads_perm.null, added.sads_perm.null)


def test_no_resampling_when_asked_for_none():
    a = grid_array(3, 5, 2, 4, 1)
    _, res = streamed(a, n_boot=0, n_perm=0)
    assert res["bootstrap"] is None and res["permutation"] is None
    assert_scores_equal(res, reference_grams(a), 3, 5)


# --------------------------------------------------------------------------- memory


def test_plan_fits_the_budget_and_blocks_follow_it():
    K, S, F = 10, 400, 512
    roomy = Sm.make_plan(K, S, F, max_task_bytes=1 << 30)
    assert roomy.block == S and roomy.task_bytes() <= 1 << 30
    budget = roomy.task_bytes(200)  # room for a block of 200 units, not more
    tight = Sm.make_plan(K, S, F, max_task_bytes=budget, unit_block=16)
    assert tight.block == 192 and tight.task_bytes() <= budget  # 200 rounded down to whole store blocks
    assert Sm.make_plan(K, S, F, max_task_bytes=budget).block == 200
    assert Sm.make_plan(K, S, F, max_task_bytes=budget - 1).block == 199
    with pytest.raises(ValueError, match="max_task_bytes=1,000,000 is too small"):
        Sm.make_plan(K, S, F, max_task_bytes=10**6)


def test_no_n_by_n_matrix_is_ever_allocated():
    """K = S = 60: one (N, N) float64 would be 104 MB; both passes and the combine stay far below it
    (the (S, S) pieces are 29 kB each, the permutation subsample's cosine 0.5 MB)."""
    K, S, L, F = 60, 60, 2, 8
    N = K * S
    a = grid_array(K, S, L, F, 0)
    tracemalloc.start()
    plan, res = streamed(a, n_boot=20, n_perm=20, perm_max_rows=240)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert plan.S_p == 4
    assert peak < N * N * 8 / 10, f"peak {peak:,} bytes: something of size (N, N) = {N * N * 8:,} bytes"
    assert res["scores"]["B"].shape == (K, K) and res["scores"]["D"].shape == (S, S)
