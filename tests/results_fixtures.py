"""Synthetic, internally consistent results dicts for tests of results.py and report.py.

The numbers come from real (random) activation vectors run through naive loops straight
from METHOD.md, so B, D, LRDS and SADS agree the way the reducers' output must. The
ablation specificity table is computed here by its own loop (not by results.py), so the
validator's consistency check is tested against an independent reference.
"""

from __future__ import annotations

import copy
import math

import numpy as np


def naive_block_means(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """B (K x K) and D (S x S) from vectors v of shape (K, S, n), by explicit loops."""
    K, S, _ = v.shape
    x = v / np.linalg.norm(v, axis=-1, keepdims=True)
    B = np.zeros((K, K))
    for l in range(K):
        for m in range(K):
            B[l, m] = np.mean([x[l, s] @ x[m, t] for s in range(S) for t in range(S) if s != t])
    D = np.zeros((S, S))
    for s in range(S):
        for t in range(S):
            D[s, t] = np.mean([x[l, s] @ x[m, t] for l in range(K) for m in range(K) if l != m])
    return B, D


def block_means(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same as naive_block_means, vectorised (the fixture for K=9, S=60 must be fast)."""
    K, S, _ = v.shape
    x = v / np.linalg.norm(v, axis=-1, keepdims=True)
    C = np.einsum("lsn,mtn->lmst", x, x)  # C[l, m, s, t]
    diag_s = np.einsum("lmss->lms", C)  # pairs s = t
    B = (C.sum((2, 3)) - diag_s.sum(-1)) / (S * (S - 1))
    Ct = C.transpose(2, 3, 0, 1)  # [s, t, l, m]
    D = (Ct.sum((2, 3)) - np.einsum("stll->st", Ct)) / (K * (K - 1))
    return B, D


def _contrast(M: np.ndarray) -> float:
    n = len(M)
    return float(np.trace(M) / n - (M.sum() - np.trace(M)) / (n * (n - 1)))


def _stat(value: float, rng: np.random.Generator, with_ci: bool = True) -> dict:
    half = float(rng.uniform(0.01, 0.05))
    return {"value": value, "ci": [value - half, value + half] if with_ci else None,
            "p_value": float(rng.uniform(0.0, 0.2))}


def naive_specificity(rows: list[dict], eval_languages: list[str]) -> dict:
    spec = {}
    for row in rows:
        if not row["mask"].startswith("key:"):
            continue
        lang = row["language"]
        if lang not in eval_languages:
            continue
        others = [e for e in eval_languages if e != lang]

        def own_spec(r, lang=lang, others=others):
            own = r["log_ppl_ratio"][lang]
            if not others:
                return own, None
            return own, own - sum(r["log_ppl_ratio"][e] for e in others) / len(others)

        own, s = own_spec(row)
        o = sorted(row["log_ppl_ratio"][e] for e in others)
        med = None if not o else (o[len(o) // 2] if len(o) % 2 else (o[len(o) // 2 - 1] + o[len(o) // 2]) / 2)
        rnd = [own_spec(r) for r in rows if r["mask"] == f"random:{lang}"]

        def mean(xs):
            return sum(xs) / len(xs) if xs else None

        def sd(xs):
            if len(xs) < 2:
                return None
            mu = sum(xs) / len(xs)
            return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))

        r_own = [a for a, _ in rnd]
        r_spec = [b for _, b in rnd if b is not None]
        spec[lang] = {
            "own_log_ratio": own,
            "other_mean_log_ratio": mean([row["log_ppl_ratio"][e] for e in others]),
            "other_median_log_ratio": med,
            "specificity": s,
            "random_own_log_ratio_mean": mean(r_own),
            "random_own_log_ratio_sd": sd(r_own),
            "random_specificity_mean": mean(r_spec),
            "random_specificity_sd": sd(r_spec),
        }
    return spec


def make_ablation_checkpoint(label: str, languages: list[str], eval_languages: list[str], R: int,
                             rng: np.random.Generator, F_total: int) -> dict:
    intact = {e: float(rng.uniform(5, 50)) for e in eval_languages}
    rows = [{"mask": "none", "language": None, "repeat": None, "n_neurons": 0,
             "ppl": dict(intact), "log_ppl_ratio": {e: 0.0 for e in eval_languages}}]

    def row(mask, lang, repeat, n, own_boost):
        ppl = {e: intact[e] * math.exp(rng.uniform(0.0, 0.3) + (own_boost if e == lang else 0.0))
               for e in eval_languages}
        return {"mask": mask, "language": lang, "repeat": repeat, "n_neurons": n,
                "ppl": ppl, "log_ppl_ratio": {e: math.log(ppl[e] / intact[e]) for e in eval_languages}}

    for lang in languages:
        n = int(rng.integers(1, F_total // 4))
        rows.append(row(f"key:{lang}", lang, None, n, 1.5))
        rows += [row(f"random:{lang}", lang, r, n, 0.0) for r in range(R)]
    return {"label": label, "eval_languages": list(eval_languages), "rows": rows,
            "specificity": naive_specificity(rows, eval_languages)}


def make_results(K: int = 3, S: int = 5, L: int = 4, n_checkpoints: int = 2, *, ablation: bool = True,
                 languages: list[str] | None = None, F: int = 6, R: int = 3, seed: int = 0,
                 steps: bool = True, version: int = 2, evolution: bool = True,
                 identical: list[list[int]] | None = None, masks_out: dict | None = None,
                 criteria: bool = False) -> dict:
    """A valid results dict over a K x S grid, L layers of F neurons, ``n_checkpoints`` checkpoints.

    ``version=1`` gives a file from before the evolution keys (no ``evolution``, no
    ``identical_checkpoints``). With version 2, ``evolution`` adds the section (built by
    lingua_ray.evolution.summarise from the fixture's own key masks) and ``identical`` lists
    groups of checkpoint indices that get the same activations and masks (the same weights);
    they go into ``identical_checkpoints``. ``masks_out``, if given, receives label -> mask.
    ``criteria`` (version 3) adds the ``criteria`` section (zscore = the key masks, lape and
    average_precision random sets; their ablation when ``ablation``) and ``alignment`` (from the
    fixture's activations, by lingua_ray.alignment).
    """
    rng = np.random.default_rng(seed)
    langs = list(languages) if languages is not None else [f"l{i}" for i in range(K)]
    assert len(langs) == K
    refs = [{"label": f"step{1000 * (i + 1)}" if steps else f"ckpt-{i}", "revision": f"rev{i}" if i % 2 == 0 else None,
             "step": 1000 * (i + 1) if steps else None} for i in range(n_checkpoints)]
    same_as = {i: g[0] for g in (identical or []) for i in g[1:]}
    cps, drawn, masks, acts = [], {}, {}, []
    for ci, ref in enumerate(refs):
        # language, meaning and neuron structure so the scores are not all near zero
        a = (rng.normal(size=(K, S, L, F)) + rng.normal(size=(K, 1, L, F)) + rng.normal(size=(1, S, L, F))
             + 2.0)
        mask = rng.random((K, L, F)) < 0.15
        if ci in same_as:  # the same weights: the same activations, so the same everything
            a, mask = drawn[same_as[ci]]
        drawn[ci] = (a, mask)
        acts.append(a)
        masks[ref["label"]] = mask
        v = a.reshape(K, S, L * F)
        B, D = block_means(v)
        bal = a / np.linalg.norm(a, axis=-1, keepdims=True)  # each layer normalised, then concatenated
        Bb, Db = block_means(bal.reshape(K, S, L * F))
        per_layer = [block_means(a[:, :, i, :]) for i in range(L)]
        sq = (a ** 2).sum(-1)  # (K, S, L)
        share = (sq / sq.sum(-1, keepdims=True)).mean((0, 1))
        share = share / share.sum()
        counts = {lang: [int(c) for c in mask[i].sum(-1)] for i, lang in enumerate(langs)}
        overlap = [[int((mask[i] & mask[j]).sum()) for j in range(K)] for i in range(K)]
        cps.append({
            **ref,
            "overall": {"lrds": _stat(_contrast(B), rng), "sads": _stat(_contrast(D), rng)},
            "overall_balanced": {"lrds": _stat(_contrast(Bb), rng), "sads": _stat(_contrast(Db), rng, with_ci=False)},
            "per_layer": {"lrds": [_stat(_contrast(b), rng) for b, _ in per_layer],
                          "sads": [_stat(_contrast(d), rng) for _, d in per_layer],
                          "norm_share": [float(x) for x in share]},
            "language_block_means": B.tolist(),
            "meaning_block_means": D.tolist(),
            "key_neurons": {"counts": counts, "total": {k: sum(c) for k, c in counts.items()}, "overlap": overlap},
        })
    if same_as:  # the same weights give the same numbers, bootstrap intervals included
        for i, j in same_as.items():
            cps[i] = {**copy.deepcopy(cps[j]), **refs[i]}
    d = {
        "schema_version": version,
        "run": {"name": "synthetic <run> & co", "created_utc": "2025-01-02T03:04:05Z", "store": "/tmp/store.zarr",
                "config": {"model": {"name": "tiny"}, "tau": 2.0, "langs": langs},
                "model_fingerprint": "sha256:" + "ab" * 32, "corpus_fingerprint": "sha256:" + "cd" * 32,
                "lingua_ray_version": "0.1.0"},
        "grid": {"languages": langs, "n_units": S, "n_layers": L, "n_neurons": F, "checkpoints": refs},
        "settings": {"tau": 2.0, "key_mode": "zscore", "top_fraction": None, "n_boot": 200, "n_perm": 100,
                     "seed": seed, "ci_level": 0.95},
        "checkpoints": cps,
        "ablation": None,
    }
    if ablation:
        # the last checkpoint with every language evaluated; the first with one language missing
        abl = [make_ablation_checkpoint(refs[-1]["label"], langs, langs, R, rng, L * F)]
        if n_checkpoints > 1:
            abl.insert(0, make_ablation_checkpoint(refs[0]["label"], langs, langs[:-1], R, rng, L * F))
        d["ablation"] = {"eval_corpus": "udhr-heldout", "n_eval_units": 40, "n_random": R, "seed": 7,
                         "checkpoints": abl}
    if version >= 2:
        from lingua_ray.evolution import summarise

        if evolution:
            d["evolution"] = summarise(cps, masks.__getitem__, langs, k=3, level=d["settings"]["ci_level"])
        d["identical_checkpoints"] = [[refs[i]["label"] for i in g] for g in (identical or [])]
    if criteria:
        assert version >= 3
        _add_criteria(d, acts, masks, rng, R, ablation)
    if masks_out is not None:
        masks_out.update(masks)
    return d


CRITERIA = ("zscore", "lape", "average_precision")


def _add_criteria(d: dict, acts: list, masks: dict, rng, R: int, ablation: bool) -> None:
    from lingua_ray.alignment import AlignmentSettings, alignment_from_vectors
    from lingua_ray.criteria import CriterionResult
    from lingua_ray.reduce_criteria import alignment_entry, criterion_entry, overlap_entry, stability_section

    langs, refs = d["grid"]["languages"], d["grid"]["checkpoints"]
    K, S, L, F = acts[0].shape
    per_ck, by_name = [], {n: [] for n in CRITERIA}
    for ref in refs:
        ms = {"zscore": masks[ref["label"]], "lape": rng.random((K, L, F)) < 0.1,
              "average_precision": rng.random((K, L, F)) < 0.2}
        for n, m in ms.items():
            by_name[n].append(m)
        per_ck.append({"label": ref["label"],
                       "criteria": {n: criterion_entry(CriterionResult(n, m, m.astype(float), {}, {"x": 1.0}), langs)
                                    for n, m in ms.items()},
                       "overlap": overlap_entry(ms, langs)})
    stab = None
    if len(refs) > 1:
        parts = {n: [stability_section(ms[i:i + 2], langs) for i in range(len(ms) - 1)] for n, ms in by_name.items()}
        stab = {n: {"overall": [p["overall"][0] for p in ps],
                    "per_language": {lang: [p["per_language"][lang][0] for p in ps] for lang in langs},
                    "per_layer": [[p["per_layer"][i][0] for p in ps] for i in range(L)]} for n, ps in parts.items()}
    d["criteria"] = {"names": list(CRITERIA), "settings": {n: {} for n in CRITERIA},
                     "sources": {n: f"source of {n}" for n in CRITERIA}, "checkpoints": per_ck, "stability": stab}
    st = AlignmentSettings(knn_k=3, bridge_threshold=min(2, K - 1))
    d["alignment"] = {"knn_k": 3, "bridge_threshold": st.bridge_threshold, "checkpoints": [
        {"label": ref["label"],
         "overall": alignment_entry(alignment_from_vectors(a.reshape(K, S, -1), K, S, st), 50, 0, 0.95),
         "per_layer": [alignment_entry(alignment_from_vectors(a[:, :, i], K, S, st), 50, 0, 0.95) for i in range(L)]}
        for ref, a in zip(refs, acts)]}
    if ablation:
        d["criteria"]["ablation"] = {"zscore": d["ablation"]}
        for n, boost in (("lape", 0.2), ("average_precision", 3.0)):
            cks = [make_ablation_checkpoint(ref["label"], langs, langs, R, rng, L * F) for ref in refs]
            for cp in cks:  # a stronger own-language effect for average_precision: the report names it
                for row in cp["rows"]:
                    if row["mask"].startswith("key:") and n == "average_precision":
                        lang = row["language"]
                        row["ppl"][lang] *= math.exp(boost)
                        row["log_ppl_ratio"][lang] += boost
                cp["specificity"] = naive_specificity(cp["rows"], cp["eval_languages"])
            d["criteria"]["ablation"][n] = {**{k: v for k, v in d["ablation"].items() if k != "checkpoints"},
                                            "checkpoints": cks}
