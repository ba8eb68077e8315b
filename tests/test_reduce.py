"""Reduce tasks on a synthetic store: equal to the (N, N) Gram path; planted structure found."""

from __future__ import annotations

import numpy as np
import pytest

from lingua_ray import metrics as M
from lingua_ray import reduce as R
from lingua_ray import uncertainty as U
from lingua_ray.store import ActivationStore, GridSpec, StoreError
from lingua_ray.summaries import Norms

K, S, L, F = 4, 12, 3, 10
LANGS = ["en", "fr", "zh", "ar"]
PLANTED = {l: (l % L, 2 + l) for l in range(K)}  # language -> (layer, neuron)


def planted_activations(alpha: float, seed: int = 0) -> np.ndarray:
    """a (K, S, L, F): noise + a per-unit meaning vector (× alpha) + one strong neuron per language."""
    rng = np.random.default_rng(seed)
    meaning = rng.normal(size=(S, L, F))
    a = 0.3 * rng.normal(size=(K, S, L, F)) + alpha * meaning[None]
    for l, (layer, k) in PLANTED.items():
        a[l, :, layer, k] += 6.0 + 0.1 * rng.normal(size=S)
    return a.astype(np.float32)


def spec(label="final") -> GridSpec:
    return GridSpec(checkpoints=[{"label": label, "revision": None, "step": None, "fingerprint": {"w": 1}}],
                    languages=LANGS, unit_ids=[f"u{s}" for s in range(S)],
                    texts={lang: [f"{lang}{s}" for s in range(S)] for lang in LANGS},
                    n_layers=L, n_neurons=F, statistics=["mean"], identity={"synthetic": True})


def make_store(path, a: np.ndarray, label="final") -> str:
    st = ActivationStore.create_or_extend(str(path), spec(label), unit_block=5)
    for _, lang, s0, s1 in list(st.missing_blocks()):
        st.write_block(label, lang, s0, {"mean": a[LANGS.index(lang), s0:s1]}, np.ones(s1 - s0, int))
    return str(path)


def reduce_store(path, checkpoint="final", **settings):
    """Both passes through the task bodies, then the combine: what the stage runs, without Ray."""
    plan = R.plan_for_store(path, **settings)
    norms = Norms.from_layers(R.layer_sq_norms(path, checkpoint, layer, plan) for layer in range(L))
    parts = (R.layer_summary(path, checkpoint, layer, plan, norms) for layer in range(L))
    return plan, R.checkpoint_scores(parts, plan, norms)


def test_tasks_equal_the_gram_path(tmp_path):
    path = make_store(tmp_path / "s.zarr", planted_activations(alpha=0.5))
    # A budget that forces three blocks per layer (5, 5, 2 units): block pairs are read from the store.
    settings = {"n_boot": 60, "n_perm": 60, "seed": 3}
    plan, res = reduce_store(path, **settings, max_task_bytes=R.plan_for_store(path, **settings).task_bytes(5))
    assert plan.blocks() == [(0, 5), (5, 10), (10, 12)]
    grams = np.stack([R.layer_gram(path, "final", layer) for layer in range(L)])
    norms = M.unit_norms(grams, K, S)
    sums = [R.layer_neuron_sums(path, "final", layer, norms) for layer in range(L)]
    np.testing.assert_allclose(res["sum_x"], np.stack([s[0] for s in sums], 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["sum_x2"], np.stack([s[1] for s in sums], 1), rtol=0, atol=1e-12)
    for key, value in M.scores_from_grams(grams, K, S).items():
        np.testing.assert_allclose(res["scores"][key], value, rtol=0, atol=1e-9)
    boot = U.bootstrap_ci(grams, K, S, n_boot=60, seed=3, per_layer=True)
    perm = U.permutation_test(grams, K, S, n_perm=60, seed=3, per_layer=True)
    for scope in ("overall", "balanced", "per_layer"):
        for name in ("lrds", "sads"):
            np.testing.assert_allclose(res["bootstrap"][scope][name].lo, boot[scope][name].lo, rtol=0, atol=1e-9)
            np.testing.assert_allclose(res["bootstrap"][scope][name].hi, boot[scope][name].hi, rtol=0, atol=1e-9)
            assert np.array_equal(res["permutation"][scope][name].p_value, perm[scope][name].p_value)


def test_block_sizes_follow_the_budget_and_the_store_blocks(tmp_path):
    path = make_store(tmp_path / "s.zarr", planted_activations(alpha=0.5))
    whole = R.plan_for_store(path)
    assert whole.block == S
    tight = R.plan_for_store(path, max_task_bytes=whole.task_bytes(7))
    assert tight.block == 5  # 7 fits; rounded down to the store's unit block of 5


def test_planted_neurons_are_the_key_neurons(tmp_path):
    path = make_store(tmp_path / "s.zarr", planted_activations(alpha=0.5))
    _, res = reduce_store(path, n_boot=50, n_perm=50)
    key = M.key_neurons(res["sum_x"], res["sum_x2"], S, tau=1.5)
    for l, (layer, k) in PLANTED.items():
        assert key["mask"][l, layer, k], LANGS[l]
        assert not key["mask"][np.arange(K) != l, layer, k].any()
        assert np.unravel_index(np.argmax(key["z"][l]), (L, F)) == (layer, k)  # the top neuron is the planted one
    ov = res["bootstrap"]["overall"]["lrds"]
    assert ov.lo <= ov.estimate <= ov.hi
    np.testing.assert_allclose(key["score"].reshape(K, -1).sum(1), np.diag(res["scores"]["B"]), atol=1e-12)


def test_sads_rises_with_planted_alignment(tmp_path):
    sads, p = [], []
    for i, alpha in enumerate([0.0, 0.3, 0.6, 1.2]):
        _, res = reduce_store(make_store(tmp_path / f"s{i}.zarr", planted_activations(alpha)), n_boot=20, n_perm=50)
        sads.append(res["scores"]["sads"])
        p.append(res["permutation"]["overall"]["sads"].p_value)
    assert all(b > a for a, b in zip(sads, sads[1:])), sads
    assert abs(sads[0]) < 0.05 < sads[-1]
    assert p[0] > 0.05 and p[-1] == 1 / 51  # the planted alignment beats every re-alignment


def test_a_missing_cell_is_named(tmp_path):
    a = planted_activations(0.5)
    st = ActivationStore.create_or_extend(str(tmp_path / "p.zarr"), spec(), unit_block=5)
    for _, lang, s0, s1 in list(st.missing_blocks()):
        if not (lang == "zh" and s0 == 5):
            st.write_block("final", lang, s0, {"mean": a[LANGS.index(lang), s0:s1]}, np.ones(s1 - s0, int))
    plan = R.plan_for_store(str(tmp_path / "p.zarr"), n_boot=5, n_perm=5)
    with pytest.raises(StoreError, match="layer 1: cell language=zh unit=u5 is missing"):
        R.layer_sq_norms(str(tmp_path / "p.zarr"), "final", 1, plan)
