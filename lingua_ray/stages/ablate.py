"""Ablate: deactivate each language's key neurons (and matched random sets) on held-out text.

Flow: results.json from the same store → evaluation texts (held-out split or eval_corpus; never the
units that picked the neurons) → the mask plan of every checkpoint, made ONCE on the driver →
evaluation units (checkpoint × mask × language), each keyed by everything that determines its
number → actors return perplexities as values; the driver keeps each as a resume record named by
its key → rows and specificity → results.json.

Resume key of an evaluation unit: the checkpoint's weight fingerprint, the mask itself (sha256 of
its bits), the evaluation texts' fingerprint, the dtype and ablation.max_tokens. token_budget is
left out on purpose: it only regroups texts into batches, and right padding with an attention
mask makes that equal to one text at a time up to float rounding (tests/test_ablation.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lingua_ray import atomic, schedule
from lingua_ray.config import RunConfig, fingerprint
from lingua_ray.corpus import load_corpus
from lingua_ray.results import load_results, write_results
from lingua_ray.stages.inputs import corpora, resolved_dtype, store_path
from lingua_ray.store import ActivationStore, text_fingerprint


@dataclass
class EvalUnit:
    checkpoint: str
    mask_id: str
    language: str
    key: str  # sha256 of everything that determines the perplexity

    @property
    def record_path(self) -> str:
        return f"ablation/units/{self.key}.json"


def mask_sha256(mask: np.ndarray | None) -> str:
    if mask is None:
        return "intact"
    m = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.sha256(str(m.shape).encode() + np.packbits(m).tobytes()).hexdigest()


def eval_texts(cfg: RunConfig, languages: list[str], store: ActivationStore) -> tuple[str, int, dict[str, list[str]], dict[str, list[str]]]:
    """(corpus name, n units, {lang: texts}, {lang: unit ids}) for every key language."""
    other = cfg.ablation.eval_corpus.corpus(languages)
    if other is not None:
        heldout = load_corpus(other)
        name = other.source
    else:
        _, heldout = corpora(cfg)
        name = f"{cfg.corpus.source} (held-out split, {cfg.split.heldout_units} units)"
        if heldout is None:
            raise ValueError("ablation needs held-out text: set split.heldout_units > 0 or ablation.eval_corpus")
    missing = [lang for lang in languages if lang not in heldout.languages]
    if missing:
        raise ValueError(f"evaluation corpus {name!r} lacks key languages {missing}")
    selected = set(store.unit_ids.tolist())
    leak = [u for u in heldout.unit_ids if u in selected]
    if leak and other is None:
        raise ValueError(f"held-out units were used to pick neurons: {leak[:3]}")
    texts = {lang: list(heldout.texts(lang)) for lang in languages}
    return name, heldout.S, texts, {lang: list(heldout.unit_ids) for lang in languages}


def run(cfg: RunConfig) -> dict:
    from lingua_ray.ablation import plan_masks, rows_from_ppl, summarise_ablation

    out_dir = Path(cfg.run.out_dir)
    path = store_path(cfg)
    results = load_results(out_dir / "results.json")
    store = ActivationStore(path)
    if fingerprint(store.checkpoint_fingerprints()) != results["run"]["model_fingerprint"]:
        raise ValueError(f"{out_dir / 'results.json'} was reduced from other checkpoints than store {path!r} "
                         "now holds; run the reduce stage first")
    languages = store.languages
    eval_name, n_units, texts, unit_ids = eval_texts(cfg, languages, store)
    texts_fp = {lang: text_fingerprint(unit_ids[lang], texts[lang]) for lang in languages}
    dtype = resolved_dtype(cfg)
    plans, units = {}, []
    for ck in store.checkpoints:
        plans[ck] = plan_masks(store.read_key_mask(ck), languages, cfg.ablation.n_random, cfg.ablation.seed,
                               cfg.ablation.exclude_mask)
        weights = store.checkpoint_info(ck).fingerprint
        for spec in plans[ck]:
            if not spec.needs_eval:
                continue
            for lang in languages:
                key = fingerprint({"weights": weights, "mask": mask_sha256(spec.mask), "texts": texts_fp[lang],
                                   "dtype": dtype, "max_tokens": cfg.ablation.max_tokens})
                units.append(EvalUnit(ck, spec.id, lang, key))
    ppl = {u.key: rec["ppl"] for u in units if (rec := _read_record(out_dir / u.record_path, u.key))}
    todo = [u for u in units if u.key not in ppl]
    print(f"[ablate] {len(todo)} of {len(units)} evaluation units to run", flush=True)
    if todo:
        masks = {(ck, s.id): s.mask for ck, plan in plans.items() for s in plan}
        _evaluate(cfg, todo, masks, texts, out_dir, ppl)
    per_ck = []
    for ck, plan in plans.items():
        by_spec: dict[str, dict[str, float]] = {}
        for u in units:
            if u.checkpoint == ck:
                by_spec.setdefault(u.mask_id, {})[u.language] = ppl[u.key]
        rows = rows_from_ppl(plan, by_spec, languages)
        per_ck.append({"label": ck, "eval_languages": languages, "rows": rows,
                       "specificity": summarise_ablation(rows, languages, languages)})
    results["ablation"] = {"eval_corpus": eval_name, "n_eval_units": n_units, "n_random": cfg.ablation.n_random,
                           "seed": cfg.ablation.seed, "checkpoints": per_ck}
    write_results(results, out_dir)
    return results


def _read_record(path: Path, key: str) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if rec.get("key") == key else None


def _evaluate(cfg: RunConfig, todo: list[EvalUnit], masks: dict, texts: dict, out_dir: Path, ppl: dict) -> None:
    from lingua_ray.worker import ModelWorker

    schedule.init_ray(cfg.cluster)
    progress = schedule.Progress(len(todo), "ablate")
    texts_ref = {lang: schedule.put(t) for lang, t in texts.items()}
    mask_refs: dict = {}  # each mask crosses the wire once, and only if some unit needs it
    args = (cfg.model, cfg.model.checkpoints, cfg.cluster.gpus_per_actor)
    by_unit = {(u.checkpoint, (u.mask_id, u.language)): u for u in todo}
    with schedule.actor_pool(ModelWorker, args, min(cfg.cluster.num_actors, len(todo)), cfg.cluster) as actors:

        def submit(actor, w):
            u = by_unit[(w.checkpoint, w.key)]
            ref = mask_refs.get((u.checkpoint, u.mask_id))
            if ref is None:
                ref = mask_refs[(u.checkpoint, u.mask_id)] = schedule.put(masks[(u.checkpoint, u.mask_id)])
            return actor.evaluate.remote(cfg.ablation, u.checkpoint, ref, u.language, texts_ref[u.language])

        def on_done(w, value):
            u = by_unit[(w.checkpoint, w.key)]
            ppl[u.key] = float(value)
            atomic.write_json(out_dir / u.record_path, {"key": u.key, "checkpoint": u.checkpoint, "mask": u.mask_id,
                                                         "eval_language": u.language, "ppl": float(value)})
            progress.update(1)

        work = [schedule.WorkUnit(u.checkpoint, (u.mask_id, u.language)) for u in todo]
        schedule.run_units(work, actors, submit, on_done, what="ablate")
