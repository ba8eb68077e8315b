"""Reduce: scores for every checkpoint in the store; key-neuron arrays written back; results.json.

Flow: refuse an incomplete store → per checkpoint, two passes of parallel tasks (one layer each,
lingua_ray/reduce.py: squared norms, then (S, S)/(K, K) summaries read in unit blocks under
reduce.max_task_bytes) added up in layer order → LRDS/SADS with intervals and p-values, key
neurons → key arrays into the store → every reduce.criteria mask (``mask_<name>``) and the alignment
metrics, from one more pass of per-layer tasks when a criterion or the alignment needs it
(reduce_criteria.py) → evolution across checkpoints → results.json (``criteria``, ``alignment``).
"""

from __future__ import annotations

import datetime as _dt
import logging

import numpy as np

import lingua_ray
from lingua_ray import evolution, metrics, schedule
from lingua_ray.config import KeyMode, RunConfig, bridge_threshold, criterion_names, fingerprint, resolved
from lingua_ray.lease import StoreLease
from lingua_ray.reduce_criteria import (alignment_entry, checkpoint_criteria, criterion_entry, criterion_settings,
                                        overlap_entry, stability_section)
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


def checkpoint_results(cfg: RunConfig, res: dict, languages: list[str]) -> tuple[dict, dict]:
    """One checkpoint's results entry and its key-neuron arrays, from its streamed summaries.

    res: reduce.CheckpointSums.results() — scores, bootstrap, permutation, sum_x / sum_x2 (K, L, F).
    Returns (entry without label fields, arrays).
    """
    K = len(languages)
    sc, boot, perm = res["scores"], res["bootstrap"], res["permutation"]
    S = sc["D"].shape[0]
    score, z = metrics.key_neuron_zscores(res["sum_x"], res["sum_x2"], S)
    mask = key_masks(cfg, z)
    counts = metrics.key_counts(mask)  # (K, L)
    flat = mask.reshape(K, -1).astype(np.int64)

    def pair(scope: str, name: str, i=None):
        b, p = boot[scope][name], perm[scope][name]
        pick = (lambda x: np.asarray(x)[i]) if i is not None else (lambda x: x)
        return _stat(pick(b.estimate), (pick(b.lo), pick(b.hi)), pick(p.p_value))

    L = score.shape[1]
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


def checkpoint_summaries(cfg: RunConfig, path: str, plan, checkpoint: str, L: int, where: str) -> dict:
    """Two passes of one task per layer (reduce.py): squared norms, then the layer summaries, added
    up in layer order (so a re-run's sums are bit-identical). Nothing of size (K·S)² exists;
    nothing outlives the checkpoint."""
    from lingua_ray.reduce import CheckpointSums, layer_sq_norms, layer_summary
    from lingua_ray.summaries import Norms

    stat = getattr(cfg.reduce.statistic, "value", cfg.reduce.statistic)
    plan_ref = schedule.put(plan)
    qs: list = [None] * L
    for layer, q in schedule.map_tasks_in_order(
            layer_sq_norms, [(path, checkpoint, layer, plan_ref, stat) for layer in range(L)], cfg.cluster):
        qs[layer] = q
    norms = Norms.from_layers(qs)
    del qs
    sums = CheckpointSums(plan, norms)
    norms_ref = schedule.put(norms)
    calls = [(path, checkpoint, layer, plan_ref, norms_ref, stat) for layer in range(L)]
    progress = schedule.Progress(L, f"reduce {where}", every=10.0)
    for _, summary in schedule.map_tasks_in_order(layer_summary, calls, cfg.cluster):
        sums.add(summary)
        del summary
        progress.update(1)
    return sums.results()


class CriteriaSide:
    """The criteria and alignment of every checkpoint, one at a time (reduce_criteria.py): masks into the
    store as ``mask_<name>``, counts and overlaps kept; only the previous checkpoint's masks are held
    (for stability)."""

    def __init__(self, cfg: RunConfig, languages: list[str]):
        self.cfg, self.languages = cfg, languages
        self.names = criterion_names(cfg.reduce.criteria, "reduce.criteria")
        self.settings = {n: criterion_settings(cfg, n) for n in self.names}
        self.checkpoints: list[dict] = []
        self.alignment: list[dict] = []
        self.previous: dict | None = None
        self.jaccards: dict[str, list] = {n: [] for n in self.names}

    def add(self, store: ActivationStore, path: str, label: str, sum_x, sum_x2, key_mask) -> None:
        chosen, align = checkpoint_criteria(self.cfg, path, label, sum_x, sum_x2)
        if "zscore" in chosen:  # the same rule on the same sums: one mask, two names
            np.testing.assert_array_equal(chosen["zscore"].mask, key_mask)
        masks = {n: r.mask for n, r in chosen.items()}
        for n, r in chosen.items():
            store.write_criterion_mask(label, n, r.mask, self.settings[n], r.info)
        self.checkpoints.append({"label": label,
                                 "criteria": {n: criterion_entry(r, self.languages) for n, r in chosen.items()},
                                 "overlap": overlap_entry(masks, self.languages)})
        if self.previous is not None:  # one consecutive pair per criterion
            for n in self.names:
                self.jaccards[n].append(stability_section([self.previous[n], masks[n]], self.languages))
        self.previous = masks
        if align is not None:
            r = self.cfg.reduce
            self.alignment.append({"label": label,
                                   "overall": alignment_entry(align["overall"], r.n_boot, r.seed, r.ci_level),
                                   "per_layer": [alignment_entry(a, r.n_boot, r.seed, r.ci_level)
                                                 for a in align["per_layer"]]})

    def sections(self) -> dict:
        """``{"criteria": ..., "alignment": ...}`` for results.json (alignment only when computed)."""
        from lingua_ray.criteria import CRITERIA

        stability = None
        if len(self.checkpoints) > 1:  # per criterion: the consecutive pairs' Jaccards, side by side
            stability = {}
            for n in self.names:
                parts = self.jaccards[n]
                stability[n] = {"overall": [p["overall"][0] for p in parts],
                                "per_language": {lang: [p["per_language"][lang][0] for p in parts]
                                                 for lang in self.languages},
                                "per_layer": [[p["per_layer"][i][0] for p in parts]
                                              for i in range(len(parts[0]["per_layer"]))]}
        out = {"criteria": {"names": self.names, "settings": self.settings,
                            "sources": {n: CRITERIA.get(n).source for n in self.names},
                            "checkpoints": self.checkpoints, "stability": stability}}
        if self.cfg.reduce.alignment:
            K = len(self.languages)
            out["alignment"] = {"knn_k": int(self.cfg.reduce.knn_k),
                                "bridge_threshold": bridge_threshold(self.cfg.reduce, K),
                                "checkpoints": self.alignment}
        return out


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
    from lingua_ray.reduce import plan_for_store

    r = cfg.reduce
    plan = plan_for_store(path, n_boot=r.n_boot, n_perm=r.n_perm, seed=r.seed, level=r.ci_level,
                          max_task_bytes=r.max_task_bytes, perm_max_rows=r.perm_max_rows)
    entries = []
    side = CriteriaSide(cfg, languages)
    for c, label in enumerate(store.checkpoints):
        # One checkpoint at a time: nothing of one checkpoint outlives it on the driver.
        res = checkpoint_summaries(cfg, path, plan, label, L, f"checkpoint {c + 1}/{C} {label}: layers")
        entry, arrays = checkpoint_results(cfg, res, languages)
        side.add(store, path, label, res["sum_x"], res["sum_x2"], arrays["mask"])
        del res
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
                     "perm_units": plan.S_p, "ci_level": cfg.reduce.ci_level},
        "checkpoints": entries,
        "ablation": None,
        "evolution": evolution.summarise(entries, store.read_key_mask, languages, k=cfg.reduce.edge_layers,
                                         level=cfg.reduce.ci_level),
        "identical_checkpoints": groups,
        **side.sections(),
    }
    write_results(results, cfg.run.out_dir)
    return results
