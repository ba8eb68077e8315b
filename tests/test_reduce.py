"""The streamed reduce stage on a synthetic store: equal to direct computation; planted structure found."""

from __future__ import annotations

import numpy as np
import pytest

from lingua_ray import pipeline, schedule
from lingua_ray.config import ClusterConfig, ReduceConfig, RunConfig, RunInfo, StoreConfig
from lingua_ray.store import ActivationStore, GridSpec

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


def make_store(path, a: np.ndarray, label="final"):
    spec = GridSpec(checkpoints=[{"label": label, "revision": None, "step": None, "fingerprint": {"w": 1}}],
                    languages=LANGS, unit_ids=[f"u{s}" for s in range(S)],
                    texts={lang: [f"{lang}{s}" for s in range(S)] for lang in LANGS},
                    n_layers=L, n_neurons=F, statistics=["mean"], identity={"synthetic": True})
    st = ActivationStore.create_or_extend(str(path), spec, unit_block=5)
    for _, lang, s0, s1 in list(st.missing_blocks()):
        k = LANGS.index(lang)
        st.write_block(label, lang, s0, {"mean": a[k, s0:s1]}, np.ones(s1 - s0, int))
    return st


pytestmark = pytest.mark.usefixtures("ray_local")


def cfg_for(tmp_path, store) -> RunConfig:
    return RunConfig(run=RunInfo(name="syn", out_dir=str(tmp_path / "out")), store=StoreConfig(path=str(store)),
                     cluster=ClusterConfig(num_cpus=2), reduce=ReduceConfig(tau=1.5, n_boot=100, n_perm=100))


def test_streamed_statistics_equal_direct(tmp_path):
    a = planted_activations(alpha=0.5)
    make_store(tmp_path / "s.zarr", a)
    out = schedule.reduce_grams(str(tmp_path / "s.zarr"), ClusterConfig(num_cpus=2), ["final"], L, K, S)
    grams, sum_x, sum_x2 = out["final"]
    A = a.astype(np.float64).reshape(K * S, L, F)
    np.testing.assert_allclose(grams, np.einsum("ilf,jlf->lij", A, A), rtol=1e-10)
    v = a.astype(np.float64).reshape(K, S, L * F)
    x = (v / np.linalg.norm(v, axis=2, keepdims=True)).reshape(K, S, L, F)
    np.testing.assert_allclose(sum_x, x.sum(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sum_x2, (x**2).sum(1), rtol=1e-9, atol=1e-12)


def test_reduce_stage_recovers_planted_neurons(tmp_path):
    make_store(tmp_path / "s.zarr", planted_activations(alpha=0.5))
    cfg = cfg_for(tmp_path, tmp_path / "s.zarr")
    res = pipeline.reduce(cfg)
    st = ActivationStore(str(tmp_path / "s.zarr"))
    mask = st.read_key_mask("final")
    z = st.group["key_z"][0]
    for l, (layer, k) in PLANTED.items():
        assert mask[l, layer, k], LANGS[l]
        assert not mask[np.arange(K) != l, layer, k].any()
        assert np.unravel_index(np.argmax(z[l]), (L, F)) == (layer, k)  # the top neuron is the planted one
    counts = res["checkpoints"][0]["key_neurons"]["counts"]
    assert [sum(counts[lang]) for lang in LANGS] == mask.sum(axis=(1, 2)).tolist()
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "scores_per_layer.csv").exists()
    ov = res["checkpoints"][0]["overall"]
    assert ov["lrds"]["ci"][0] <= ov["lrds"]["value"] <= ov["lrds"]["ci"][1]


def test_sads_rises_with_planted_alignment(tmp_path):
    sads = []
    for i, alpha in enumerate([0.0, 0.3, 0.6, 1.2]):
        make_store(tmp_path / f"s{i}.zarr", planted_activations(alpha))
        res = pipeline.reduce(cfg_for(tmp_path / f"o{i}", tmp_path / f"s{i}.zarr"))
        sads.append(res["checkpoints"][0]["overall"]["sads"]["value"])
    assert all(b > a for a, b in zip(sads, sads[1:])), sads
    assert abs(sads[0]) < 0.05 < sads[-1]


def test_reduce_refuses_incomplete_store(tmp_path):
    a = planted_activations(0.5)
    spec = GridSpec(checkpoints=[{"label": "final", "revision": None, "step": None, "fingerprint": {}}],
                    languages=LANGS, unit_ids=[f"u{s}" for s in range(S)],
                    texts={lang: [f"{lang}{s}" for s in range(S)] for lang in LANGS},
                    n_layers=L, n_neurons=F, statistics=["mean"], identity={})
    st = ActivationStore.create_or_extend(str(tmp_path / "p.zarr"), spec, unit_block=5)
    st.write_block("final", "en", 0, {"mean": a[0, :5]}, np.ones(5, int))
    with pytest.raises(RuntimeError, match="not recorded yet"):
        pipeline.reduce(cfg_for(tmp_path, tmp_path / "p.zarr"))
