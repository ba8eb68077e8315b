"""Ablate: deactivate each language's key neurons (and matched random sets) on held-out text.

Flow: results.json from the same store → evaluation texts (held-out split or eval_corpus; never the
units that picked the neurons) → the mask plan of every criterion of ``ablation.criteria`` and
checkpoint (its sets and their matched random controls), made ONCE on the driver →
evaluation units (checkpoint × mask × language), each keyed by everything that determines its
number → actors return perplexities as values; the driver keeps each as a resume record named by
its key → rows and specificity per criterion → results.json (``criteria.ablation``; ``ablation`` is
the zscore entry, as before criteria existed).

Resume key of an evaluation unit: the checkpoint's weight fingerprint, the mask itself (sha256 of
its bits), the evaluation texts' fingerprint, the dtype and ablation.max_tokens. token_budget is
left out on purpose: it only regroups texts into batches, and right padding with an attention
mask makes that equal to one text at a time up to float rounding (tests/test_ablation.py). The
criterion is left out too: two criteria that pick the same set share one evaluation, and a changed
criterion setting that changes a set changes its key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lingua_ray import atomic, schedule
from lingua_ray.config import RunConfig, criterion_names, fingerprint
from lingua_ray.corpus import load_corpus
from lingua_ray.results import load_results, write_results
from lingua_ray.stages.inputs import check_results_current, corpora, resolved_dtype, store_path
from lingua_ray.store import ActivationStore, text_fingerprint


@dataclass
class EvalUnit:
    checkpoint: str
    mask_id: str
    language: str
    key: str  # sha256 of everything that determines the perplexity
    mask_language: str | None = None  # the language whose set (or control) the mask is; None: intact

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
    languages = store.languages
    names = criterion_names(cfg.ablation.criteria, "ablation.criteria")
    _check_masks_current(cfg, names, results, store, out_dir)  # the most specific refusal first
    # Then results.json itself: from this store's checkpoints and texts, with this config's reduce settings.
    check_results_current(cfg, results, out_dir / "results.json", store)
    eval_name, n_units, texts, unit_ids = eval_texts(cfg, languages, store)
    texts_fp = {lang: text_fingerprint(unit_ids[lang], texts[lang]) for lang in languages}
    dtype = resolved_dtype(cfg)
    plans, units, keys = {}, [], {}
    for name in names:
        for ck in store.checkpoints:
            # zscore's mask is the reducer's key_mask (the same rule on the same sums).
            mask = store.read_key_mask(ck) if name == "zscore" else store.read_criterion_mask(ck, name)
            plans[(name, ck)] = plan_masks(mask, languages, cfg.ablation.n_random, cfg.ablation.seed,
                                           cfg.ablation.exclude_mask)
            weights = store.checkpoint_info(ck).fingerprint
            for spec in plans[(name, ck)]:
                if not spec.needs_eval:
                    continue
                for lang in languages:
                    key = fingerprint({"weights": weights, "mask": mask_sha256(spec.mask), "texts": texts_fp[lang],
                                       "dtype": dtype, "max_tokens": cfg.ablation.max_tokens})
                    units.append(EvalUnit(ck, _mask_id(name, spec.id), lang, key, spec.language))
                    keys[(name, ck, spec.id, lang)] = key
    ppl = {u.key: rec["ppl"] for u in units if (rec := _read_record(out_dir / u.record_path, u.key))}
    # Two criteria (or a criterion and a control) with the same mask share one evaluation: same key.
    todo = list({u.key: u for u in units if u.key not in ppl}.values())
    # The intact model first, then language by language, every criterion's sets and controls of that
    # language together: an interrupted run (resumed from the records) has whole languages compared.
    rank = {lang: i for i, lang in enumerate(languages)}
    todo.sort(key=lambda u: (-1 if u.mask_language is None else rank[u.mask_language]))
    print(f"[ablate] {len(todo)} of {len({u.key for u in units})} evaluation units to run", flush=True)
    if todo:
        masks = {(ck, _mask_id(name, s.id)): s.mask for (name, ck), plan in plans.items() for s in plan}
        _evaluate(cfg, todo, masks, texts, out_dir, ppl)
    sections = {}
    for name in names:
        per_ck = []
        for ck in store.checkpoints:
            plan = plans[(name, ck)]
            by_spec = {spec.id: {lang: ppl[keys[(name, ck, spec.id, lang)]] for lang in languages}
                       for spec in plan if spec.needs_eval}
            rows = rows_from_ppl(plan, by_spec, languages)
            per_ck.append({"label": ck, "eval_languages": languages, "rows": rows,
                           "specificity": summarise_ablation(rows, languages, languages)})
        sections[name] = {"eval_corpus": eval_name, "n_eval_units": n_units, "n_random": cfg.ablation.n_random,
                          "seed": cfg.ablation.seed, "checkpoints": per_ck}
    results["ablation"] = sections.get("zscore")
    if results.get("criteria") is not None:
        results["criteria"]["ablation"] = sections
    write_results(results, out_dir)
    return results


def _mask_id(criterion: str, spec_id: str) -> str:
    """A mask's id in the evaluation plan: the spec id ("key:fr", "random:fr:1"), prefixed by the
    criterion except for zscore (whose ids are those of every run before criteria existed)."""
    return spec_id if criterion == "zscore" else f"{criterion}|{spec_id}"


def _check_masks_current(cfg: RunConfig, names: list[str], results: dict, store: ActivationStore,
                         out_dir: Path) -> None:
    """Every criterion to ablate was reduced with this run's settings (else its mask is stale)."""
    from lingua_ray.reduce_criteria import criterion_settings

    section = results.get("criteria") or {"names": ["zscore"], "settings": {}}
    for name in names:
        if name not in section["names"]:
            raise ValueError(f"{out_dir / 'results.json'} has no {name} criterion (it has {section['names']}); "
                             f"run the reduce stage with {name} in reduce.criteria first")
        if name == "zscore":
            continue
        want = criterion_settings(cfg, name)
        if store.criterion_settings(name) != want or section["settings"].get(name) != want:
            raise ValueError(f"mask_{name} in store {store.path!r} was selected with settings "
                             f"{store.criterion_settings(name)}, not this run's reduce.{name} {want}; "
                             "run the reduce stage first")


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
