"""Reduce: scores for every checkpoint in the store; key-neuron arrays written back; results.json.

Flow: refuse an incomplete store → per-layer sufficient statistics as parallel tasks (one layer of
one checkpoint each, lingua_ray/reduce.py) → LRDS/SADS with intervals and p-values, key neurons
(metrics.py, uncertainty.py) → key arrays into the store → results.json (results.py schema).
"""

from __future__ import annotations

import datetime as _dt
import logging

import numpy as np

import lingua_ray
from lingua_ray import evolution, metrics, schedule, uncertainty
from lingua_ray.config import KeyMode, RunConfig, fingerprint, resolved
from lingua_ray.lease import StoreLease
from lingua_ray.results import SCHEMA_VERSION, write_results
from lingua_ray.stages.inputs import store_path
from lingua_ray.store import ActivationStore


log = logging.getLogger("lingua_ray")


def _stat(value, ci=None, p=None) -> dict:
    return {"value": float(value), "ci": None if ci is None else [float(ci[0]), float(ci[1])],
            "p_value": None if p is None else float(p)}


def key_masks(cfg: RunConfig, z: np.ndarray) -> np.ndarray:
    """bool (K, L, F) from z (K, L, F) by the configured rule."""
    if KeyMode(cfg.reduce.key_mode) is KeyMode.zscore:
        return metrics.key_neuron_masks(z, cfg.reduce.tau)
    return metrics.top_fraction_masks(z, cfg.reduce.top_fraction)


def checkpoint_results(cfg: RunConfig, grams, sum_x, sum_x2, languages: list[str]) -> tuple[dict, dict]:
    """One checkpoint's results entry and its key-neuron arrays, from sufficient statistics.

    grams (L, N, N), sum_x / sum_x2 (K, L, F). Returns (entry without label fields, arrays).
    """
    K = len(languages)
    S = grams.shape[1] // K
    r = cfg.reduce
    sc = metrics.scores_from_grams(grams, K, S)
    boot = uncertainty.bootstrap_ci(grams, K, S, n_boot=r.n_boot, seed=r.seed, level=r.ci_level, per_layer=True)
    perm = uncertainty.permutation_test(grams, K, S, n_perm=r.n_perm, seed=r.seed, per_layer=True)
    score, z = metrics.key_neuron_zscores(sum_x, sum_x2, S)
    mask = key_masks(cfg, z)
    counts = metrics.key_counts(mask)  # (K, L)
    flat = mask.reshape(K, -1).astype(np.int64)

    def pair(scope: str, name: str, i=None):
        b, p = boot[scope][name], perm[scope][name]
        pick = (lambda x: np.asarray(x)[i]) if i is not None else (lambda x: x)
        return _stat(pick(b.estimate), (pick(b.lo), pick(b.hi)), pick(p.p_value))

    L = grams.shape[0]
    entry = {
        "overall": {"lrds": pair("overall", "lrds"), "sads": pair("overall", "sads")},
        "overall_balanced": {"lrds": pair("balanced", "lrds"), "sads": pair("balanced", "sads")},
        "per_layer": {"lrds": [pair("per_layer", "lrds", i) for i in range(L)],
                      "sads": [pair("per_layer", "sads", i) for i in range(L)],
                      "norm_share": [float(x) for x in sc["layer_shares"]]},
        "language_block_means": sc["B"].tolist(),
        "meaning_block_means": sc["D"].tolist(),
        "key_neurons": {"counts": {lang: counts[k].tolist() for k, lang in enumerate(languages)},
                        "total": {lang: int(counts[k].sum()) for k, lang in enumerate(languages)},
                        "overlap": (flat @ flat.T).tolist()},
    }
    # The formula's identity Σ_k score[l,k] = B[l,l] holds for the data actually stored: check it.
    np.testing.assert_allclose(score.reshape(K, -1).sum(1), np.diag(sc["B"]), rtol=1e-6, atol=1e-9)
    return entry, {"score": score, "z": z, "mask": mask}


def sufficient_statistics(cfg: RunConfig, path: str, checkpoint: str, L: int, K: int, S: int):
    """(grams (L, N, N), sum_x (K, L, F), sum_x2 (K, L, F)) of one checkpoint, one task per layer."""
    from lingua_ray.reduce import layer_gram, layer_neuron_sums

    stat = getattr(cfg.reduce.statistic, "value", cfg.reduce.statistic)
    grams = np.stack(schedule.map_tasks(layer_gram, [(path, checkpoint, layer, stat) for layer in range(L)],
                                        cfg.cluster))
    norms = schedule.put(metrics.unit_norms(grams, K, S))
    sums = schedule.map_tasks(layer_neuron_sums, [(path, checkpoint, layer, norms, stat) for layer in range(L)],
                              cfg.cluster)
    return grams, np.stack([s[0] for s in sums], 1), np.stack([s[1] for s in sums], 1)


def run(cfg: RunConfig) -> dict:
    path = store_path(cfg)
    ActivationStore(path)  # a missing store is refused before the lease file is made
    with StoreLease(path, run=cfg.run.name, ttl_s=cfg.store.lease_ttl_s):  # it writes the key arrays
        return _run(cfg, path)


def _run(cfg: RunConfig, path: str) -> dict:
    store = ActivationStore(path, mode="r+")
    missing = list(store.missing_blocks())
    if missing:
        ck, lang, s0, s1 = missing[0]
        raise RuntimeError(f"{len(missing)} work unit(s) not recorded yet (first: checkpoint={ck} language={lang} "
                           f"units {s0}-{s1}); run the record stage first")
    C, K, S, L, F = store.shape
    languages = store.languages
    schedule.init_ray(cfg.cluster)
    settings = {"tau": cfg.reduce.tau, "key_mode": KeyMode(cfg.reduce.key_mode).value,
                "top_fraction": cfg.reduce.top_fraction,
                "statistic": getattr(cfg.reduce.statistic, "value", cfg.reduce.statistic)}
    entries = []
    for label in store.checkpoints:
        # One checkpoint at a time: nothing of one checkpoint outlives it on the driver.
        entry, arrays = checkpoint_results(cfg, *sufficient_statistics(cfg, path, label, L, K, S), languages)
        store.write_key_neurons(label, arrays, settings)
        info = store.checkpoint_info(label)
        entries.append({"label": label, "revision": info.revision, "step": info.step, **entry})
    store.consolidate()
    groups = evolution.identical_checkpoints(store.checkpoint_fingerprints())
    if groups:
        log.warning(evolution.identical_message(groups))
        print(f"[reduce] warning: {evolution.identical_message(groups)}", flush=True)
    key_mode = KeyMode(cfg.reduce.key_mode)
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": {"name": cfg.run.name, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "store": path, "config": resolved(cfg),
                "model_fingerprint": fingerprint(store.checkpoint_fingerprints()),
                "corpus_fingerprint": fingerprint(store.language_fingerprints()),
                "lingua_ray_version": lingua_ray.__version__},
        "grid": {"languages": languages, "n_units": S, "n_layers": L, "n_neurons": F,
                 "checkpoints": [{"label": e["label"], "revision": e["revision"], "step": e["step"]}
                                 for e in entries]},
        "settings": {"tau": cfg.reduce.tau if key_mode is KeyMode.zscore else None,
                     "key_mode": key_mode.value, "top_fraction": cfg.reduce.top_fraction,
                     "n_boot": cfg.reduce.n_boot, "n_perm": cfg.reduce.n_perm, "seed": cfg.reduce.seed,
                     "ci_level": cfg.reduce.ci_level},
        "checkpoints": entries,
        "ablation": None,
        "evolution": evolution.summarise(entries, store.read_key_mask, languages, k=cfg.reduce.edge_layers,
                                         level=cfg.reduce.ci_level),
        "identical_checkpoints": groups,
    }
    write_results(results, cfg.run.out_dir)
    return results
