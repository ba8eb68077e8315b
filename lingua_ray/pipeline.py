"""The stages, composed: corpus → record → reduce → (ablate) → results → report.

Entry points in ``workflows/`` are thin wrappers over ``run(cfg, stages)``. Each
stage reads what the previous one wrote (the store, results.json), so a stage can
be re-run alone, and every stage resumes: finished cells, masks and evaluation
units are never recomputed or overwritten.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np

import lingua_ray
from lingua_ray import metrics, uncertainty
from lingua_ray.config import RunConfig, fingerprint, resolved
from lingua_ray.corpus import ParallelCorpus, load_corpus
from lingua_ray.models.loading import model_fingerprint, torch_dtype
from lingua_ray.store import ActivationStore, GridSpec

STAGES = ("record", "reduce", "ablate", "report")


def store_path(cfg: RunConfig) -> str:
    return cfg.store.path or str(Path(cfg.run.out_dir) / "activations.zarr")


def corpora(cfg: RunConfig) -> tuple[ParallelCorpus, ParallelCorpus | None]:
    """(selection, held-out): held-out units never pick neurons; None when the split is off."""
    corpus = load_corpus(cfg.corpus)
    n_out = cfg.split.heldout_units
    if n_out <= 0:
        return corpus, None
    if n_out >= corpus.S - 1:
        raise ValueError(f"split.heldout_units={n_out} leaves too few of the corpus's {corpus.S} units")
    return corpus.split(corpus.S - n_out, seed=cfg.split.seed)


def _identity(cfg: RunConfig) -> dict:
    """Config parts that change the recorded numbers: a store refuses a run that differs in any."""
    gpu = cfg.cluster.gpus_per_actor > 0
    return {
        "model": {"name": cfg.model.name, "source": cfg.model.source, "hf_id": cfg.model.hf_id,
                  "gguf_package": cfg.model.gguf_package,
                  "dtype": str(torch_dtype(cfg.model.dtype, "cuda" if gpu else "cpu")).replace("torch.", "")},
        "capture": {"max_tokens": cfg.capture.max_tokens},
        "corpus": {"source": cfg.corpus.source, "max_units": cfg.corpus.max_units, "seed": cfg.corpus.seed,
                   "heldout_units": cfg.split.heldout_units, "split_seed": cfg.split.seed},
    }


def record(cfg: RunConfig) -> dict:
    """Create or extend the store for this run's grid and record every missing cell."""
    from lingua_ray import schedule

    selection, _ = corpora(cfg)
    ckpts = []
    for ck in cfg.model.checkpoints:
        fp = model_fingerprint(cfg.model, ck)
        ckpts.append({"label": ck.label, "revision": ck.revision, "step": ck.step, "fingerprint": fp})
    shapes = {(c["fingerprint"]["n_layers"], c["fingerprint"]["n_neurons"]) for c in ckpts}
    if len(shapes) != 1:
        raise ValueError(f"checkpoints of one store must share (layers, neurons); got {sorted(shapes)}. "
                         "Use one run per model size (e.g. a Hydra multirun over model=...).")
    (L, F), = shapes
    spec = GridSpec(
        checkpoints=ckpts, languages=list(selection.languages), unit_ids=list(selection.unit_ids),
        texts={lang: list(selection.texts(lang)) for lang in selection.languages},
        n_layers=L, n_neurons=F, statistics=list(cfg.capture.statistics), identity=_identity(cfg),
        config=resolved(cfg),
    )
    path = store_path(cfg)
    store = ActivationStore.create_or_extend(path, spec, cfg.store.unit_block)
    missing = list(store.missing_blocks(verify=cfg.store.verify_on_resume))
    C, K, S = store.shape[:3]
    stats = schedule.record(path, cfg.cluster, cfg.model, cfg.capture, missing, C * K * S)
    stats["store_bytes"] = _du(path)
    stats["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # One entry per invocation: a resume must not overwrite the first run's throughput numbers.
    hist_path = Path(cfg.run.out_dir) / "record_stats.json"
    history = json.loads(hist_path.read_text()) if hist_path.exists() else []
    _write_json(hist_path, (history if isinstance(history, list) else [history]) + [stats])
    return stats


def _du(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def _stat(value, ci=None, p=None) -> dict:
    return {"value": float(value), "ci": None if ci is None else [float(ci[0]), float(ci[1])],
            "p_value": None if p is None else float(p)}


def _key_masks(cfg: RunConfig, z: np.ndarray) -> np.ndarray:
    if cfg.reduce.key_mode == "zscore":
        return metrics.key_neuron_masks(z, cfg.reduce.tau)
    if cfg.reduce.key_mode == "top_fraction":
        if cfg.reduce.top_fraction is None:
            raise ValueError("reduce.key_mode=top_fraction needs reduce.top_fraction")
        return metrics.top_fraction_masks(z, cfg.reduce.top_fraction)
    raise ValueError(f"reduce.key_mode={cfg.reduce.key_mode!r}: choose zscore or top_fraction")


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
    mask = _key_masks(cfg, z)
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


def reduce(cfg: RunConfig) -> dict:
    """Scores for every checkpoint in the store; key-neuron arrays written back; results.json written."""
    from lingua_ray import schedule
    from lingua_ray.results import write_results

    path = store_path(cfg)
    store = ActivationStore(path, mode="r+")
    missing = list(store.missing_blocks())
    if missing:
        ck, lang, s0, s1 = missing[0]
        raise RuntimeError(f"{len(missing)} work unit(s) not recorded yet (first: checkpoint={ck} language={lang} "
                           f"units {s0}-{s1}); run the record stage first")
    C, K, S, L, F = store.shape
    languages = store.languages
    m = store.manifest
    suff = schedule.reduce_grams(path, cfg.cluster, store.checkpoints, L, K, S, cfg.reduce.statistic)
    entries = []
    for label in store.checkpoints:
        entry, arrays = checkpoint_results(cfg, *suff[label], languages)
        store.write_key_neurons(label, arrays, {"tau": cfg.reduce.tau, "key_mode": cfg.reduce.key_mode,
                                                "top_fraction": cfg.reduce.top_fraction,
                                                "statistic": cfg.reduce.statistic})
        info = m["checkpoints"][label]
        entries.append({"label": label, "revision": info["revision"], "step": info["step"], **entry})
    fps = {k: v["fingerprint"] for k, v in m["checkpoints"].items()}
    results = {
        "schema_version": 1,
        "run": {"name": cfg.run.name, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "store": path, "config": resolved(cfg),
                "model_fingerprint": fingerprint(fps), "corpus_fingerprint": fingerprint(m["languages"]),
                "lingua_ray_version": lingua_ray.__version__},
        "grid": {"languages": languages, "n_units": S, "n_layers": L, "n_neurons": F,
                 "checkpoints": [{"label": e["label"], "revision": e["revision"], "step": e["step"]}
                                 for e in entries]},
        "settings": {"tau": cfg.reduce.tau if cfg.reduce.key_mode == "zscore" else None,
                     "key_mode": cfg.reduce.key_mode, "top_fraction": cfg.reduce.top_fraction,
                     "n_boot": cfg.reduce.n_boot, "n_perm": cfg.reduce.n_perm, "seed": cfg.reduce.seed,
                     "ci_level": cfg.reduce.ci_level},
        "checkpoints": entries,
        "ablation": None,
    }
    write_results(results, cfg.run.out_dir)
    return results


def ablate(cfg: RunConfig) -> dict:
    """Deactivate each language's key neurons (and matched random sets) on held-out text."""
    from lingua_ray import schedule
    from lingua_ray.ablation import plan_masks, rows_from_ppl, summarise_ablation
    from lingua_ray.results import load_results, write_results

    out_dir = cfg.run.out_dir
    results = load_results(Path(out_dir) / "results.json")
    path = store_path(cfg)
    store = ActivationStore(path)
    languages = store.languages
    if cfg.ablation.eval_corpus is not None:
        heldout = load_corpus(cfg.ablation.eval_corpus)
        eval_name = cfg.ablation.eval_corpus.source
    else:
        _, heldout = corpora(cfg)
        eval_name = f"{cfg.corpus.source} (held-out split, {cfg.split.heldout_units} units)"
        if heldout is None:
            raise ValueError("ablation needs held-out text: set split.heldout_units > 0 or ablation.eval_corpus")
    eval_languages = [lang for lang in languages if lang in heldout.languages]
    missing = [lang for lang in languages if lang not in heldout.languages]
    if missing:
        raise ValueError(f"evaluation corpus {eval_name!r} lacks key languages {missing}")
    selected = set(store.unit_ids.tolist())
    leak = [u for u in heldout.unit_ids if u in selected]
    if leak and cfg.ablation.eval_corpus is None:
        raise ValueError(f"held-out units were used to pick neurons: {leak[:3]}")
    eval_texts = {lang: list(heldout.texts(lang)) for lang in eval_languages}
    plans = {ck: plan_masks(store.read_key_mask(ck), languages, cfg.ablation.n_random, cfg.ablation.seed,
                        cfg.ablation.exclude_mask)
             for ck in store.checkpoints}
    units = [(ck, spec.id, lang) for ck, plan in plans.items() for spec in plan if spec.needs_eval
             for lang in eval_languages]
    schedule.ablate(path, cfg.cluster, cfg.model, cfg.ablation, languages, units, eval_texts, out_dir)
    per_ck = []
    for ck, plan in plans.items():
        ppl: dict[str, dict[str, float]] = {}
        for _, spec_id, lang in (u for u in units if u[0] == ck):
            rec = json.loads(Path(schedule.ablation_unit_file(out_dir, ck, spec_id, lang)).read_text())
            ppl.setdefault(spec_id, {})[lang] = rec["ppl"]
        rows = rows_from_ppl(plan, ppl, eval_languages)
        per_ck.append({"label": ck, "eval_languages": eval_languages, "rows": rows,
                       "specificity": summarise_ablation(rows, languages, eval_languages)})
    results["ablation"] = {"eval_corpus": eval_name, "n_eval_units": heldout.S, "n_random": cfg.ablation.n_random,
                           "seed": cfg.ablation.seed, "checkpoints": per_ck}
    write_results(results, out_dir)
    return results


def report(cfg: RunConfig) -> Path:
    from lingua_ray.report import write_report
    from lingua_ray.results import load_results

    results = load_results(Path(cfg.run.out_dir) / "results.json")
    return write_report(results, Path(cfg.run.out_dir) / "report.html")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def run(cfg: RunConfig, stages: list[str] | None = None) -> dict:
    """Run the given stages in order; returns what each produced (stats, results, report path)."""
    stages = list(stages or cfg.stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    Path(cfg.run.out_dir).mkdir(parents=True, exist_ok=True)
    _write_json(Path(cfg.run.out_dir) / "config.resolved.json", resolved(cfg))
    out: dict = {}
    timings = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "ablate" and not cfg.ablation.enabled:
            continue
        t0 = time.perf_counter()
        out[stage] = {"record": record, "reduce": reduce, "ablate": ablate, "report": report}[stage](cfg)
        timings[stage] = round(time.perf_counter() - t0, 1)
        print(f"[{stage}] done in {timings[stage]:.1f}s", flush=True)
    _write_json(Path(cfg.run.out_dir) / "timings.json", timings)
    if "report" in out:
        print(f"report: {out['report']}", flush=True)
    return out
