"""Reduce: every configured key-neuron criterion and the alignment metrics of one checkpoint.

One task per layer (as reduce.py's passes) reads the store under ``reduce.max_task_bytes``:

* ``act_prob`` (K, F): the token-weighted share of own tokens with act_fn(gate(x)) > 0 (LAPE, LNA),
  read in unit blocks;
* ``ap`` (K, F): each neuron's average precision (Kojima et al.), read in neuron slices of all units
  (a neuron's AP needs every unit's response, never another neuron's);
* the layer's alignment metrics (alignment.py: retrieval, MEXA, ILO, CKA), from the same neuron
  slices; no (N, N) matrix is built, N = K·S.

One more task per checkpoint scores the alignment of all layers concatenated (the ``overall`` scope),
reading one neuron slice of one layer at a time. The driver holds (K, L, F) arrays only; it selects
every criterion's mask with ``criteria.select`` and builds the ``criteria`` / ``alignment`` sections
of results.json (results_criteria.py). docs/criteria.md defines every number.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np

from lingua_ray import criteria, schedule
from lingua_ray.alignment import AlignmentScores, AlignmentSettings, alignment_from_vectors, bootstrap_alignment
from lingua_ray.config import KeyMode, RunConfig, bridge_threshold, criterion_names
from lingua_ray.criteria import CriterionInputs, CriterionResult, ZScoreSettings, average_precision_layer
from lingua_ray.store import ActivationStore, StoreError

__all__ = ["alignment_entry", "checkpoint_criteria", "criterion_entry", "criterion_settings", "layer_criteria",
           "needs_of", "overall_alignment", "overlap_entry", "stability_section"]

# Which per-layer product each criterion reads (zscore reads the reducer's sum_x / sum_x2).
_NEEDS = {"zscore": (), "lape": ("act_prob",), "lna": ("act_prob",), "average_precision": ("ap",)}


def criterion_settings(cfg: RunConfig, name: str) -> dict:
    """The settings criterion ``name`` runs with, as a plain dict (stored beside its mask).
    zscore's come from reduce.tau / key_mode / top_fraction, so its mask is the reducer's key_mask."""
    r = cfg.reduce
    if name == "zscore":
        s = ZScoreSettings(mode=KeyMode(r.key_mode).value, tau=float(r.tau), top_fraction=r.top_fraction)
    else:
        s = criteria.CRITERIA.get(name).settings(getattr(r, name))
    return asdict(s)


def needs_of(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({n for name in names for n in _NEEDS[name]}))


# --------------------------------------------------------------------------- reading in bounded memory


class _Slices:
    """A lazy sequence of neuron slices (K, S, w) of some layers: item i is read when indexed.
    The last item read is kept, so a single-slice sequence is read from the store once."""

    def __init__(self, store: ActivationStore, checkpoint: str, layers: Sequence[int], width: int,
                 stat: str = "mean"):
        _, self.K, self.S, _, F = store.shape
        self.store, self.checkpoint, self.stat = store, checkpoint, stat
        self.items = [(layer, f0, min(F, f0 + width)) for layer in layers for f0 in range(0, F, width)]
        self._last: tuple = (None, None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._last[0] != i:
            layer, f0, f1 = self.items[i]
            a = self.store.read_layer_features(self.checkpoint, layer, f0, f1, self.stat)
            if not np.isfinite(a).all():
                raise StoreError(f"checkpoint {self.checkpoint!r} layer {layer}: a cell of {self.stat} is missing or "
                                 "non-finite; record the grid first")
            self._last = (i, a)
        return self._last[1]


def _width(K: int, S: int, F: int, budget: int) -> int:
    """Neurons per slice: ~12 float64 (N, w) temporaries (average precision's sort) under budget."""
    return int(max(1, min(F, budget // (12 * 8 * K * S))))


def layer_criteria(store_path: str, checkpoint: str, layer: int, needs: tuple[str, ...], max_task_bytes: int,
                   align: Optional[AlignmentSettings], stat: str = "mean") -> dict:
    """Task: one layer's ``act_prob`` (K, F), ``ap`` (K, F) and ``alignment`` (AlignmentScores), as asked.
    ``stat``: the per-unit statistic AP and alignment read (reduce.statistic, mean by default)."""
    store = ActivationStore(store_path)
    _, K, S, _, F = store.shape
    out: dict = {}
    if "act_prob" in needs:
        n = store.n_tokens(checkpoint).astype(np.float64)  # (K, S)
        acc = np.zeros((K, F))
        b = int(max(1, min(S, max_task_bytes // (4 * 4 * K * F))))
        for s0 in range(0, S, b):
            frac = store.read_layer_block(checkpoint, layer, s0, min(S, s0 + b), "act_pos_frac")
            if not np.isfinite(frac).all():
                raise StoreError(f"checkpoint {checkpoint!r} layer {layer}: act_pos_frac is missing or non-finite "
                                 f"among units {s0}..{min(S, s0 + b) - 1}; record the grid first")
            acc += np.einsum("ks,ksf->kf", n[:, s0:s0 + b], frac)
        out["act_prob"] = acc / n.sum(1)[:, None]
    slices = _Slices(store, checkpoint, [layer], _width(K, S, F, max_task_bytes), stat)
    if "ap" in needs:
        out["ap"] = np.concatenate([average_precision_layer(slices[i], max_task_bytes // 2)
                                    for i in range(len(slices))], axis=1)
    if align is not None:
        out["alignment"] = alignment_from_vectors(slices, K, S, align, max(1 << 20, max_task_bytes // 4))
    return out


def overall_alignment(store_path: str, checkpoint: str, max_task_bytes: int, align: AlignmentSettings,
                      stat: str = "mean") -> AlignmentScores:
    """Task: alignment on all layers concatenated (v of METHOD.md), one neuron slice at a time."""
    store = ActivationStore(store_path)
    _, K, S, L, F = store.shape
    slices = _Slices(store, checkpoint, range(L), _width(K, S, F, max_task_bytes), stat)
    return alignment_from_vectors(slices, K, S, align, max(1 << 20, max_task_bytes // 4))


# --------------------------------------------------------------------------- one checkpoint, on the driver


def checkpoint_criteria(cfg: RunConfig, path: str, checkpoint: str, sum_x: np.ndarray, sum_x2: np.ndarray
                        ) -> tuple[dict[str, CriterionResult], Optional[dict]]:
    """({name: CriterionResult} of reduce.criteria, {"per_layer": [AlignmentScores], "overall": ...} or None).

    sum_x, sum_x2: (K, L, F) from the reducer's pass 2 (zscore needs nothing else)."""
    names = criterion_names(cfg.reduce.criteria, "reduce.criteria")
    K, L, F = sum_x.shape
    store = ActivationStore(path)
    S = store.shape[2]
    needs = needs_of(names)
    align = (AlignmentSettings(int(cfg.reduce.knn_k), bridge_threshold(cfg.reduce, K))
             if cfg.reduce.alignment else None)
    arrays = {n: np.zeros((K, L, F)) for n in needs}
    per_layer: list = [None] * L
    overall = None
    budget = int(cfg.reduce.max_task_bytes)
    stat = getattr(cfg.reduce.statistic, "value", cfg.reduce.statistic)
    if needs or align is not None:
        calls = [(path, checkpoint, layer, needs, budget, align, stat) for layer in range(L)]
        progress = schedule.Progress(L, f"criteria/alignment {checkpoint}: layers", every=10.0)
        for layer, out in schedule.map_tasks_in_order(layer_criteria, calls, cfg.cluster):
            for n in needs:
                arrays[n][:, layer] = out[n]
            if align is not None:  # a copy: Ray's zero-copy views would pin the whole result
                per_layer[layer] = copy.deepcopy(out["alignment"])
            del out
            progress.update(1)
        if align is not None:
            overall = copy.deepcopy(schedule.map_tasks(overall_alignment, [(path, checkpoint, budget, align, stat)],
                                                       cfg.cluster)[0])
    inputs = CriterionInputs(K, S, L, F, sum_x=sum_x, sum_x2=sum_x2, act_prob=arrays.get("act_prob"),
                             ap=arrays.get("ap"))
    results = {n: criteria.select(n, inputs, criterion_settings(cfg, n)) for n in names}
    return results, (None if align is None else {"per_layer": per_layer, "overall": overall})


# --------------------------------------------------------------------------- results.json sections


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    return x


def criterion_entry(res: CriterionResult, languages: list[str]) -> dict:
    """One criterion on one checkpoint: set sizes per (language, layer), totals, neurons in any set, info."""
    counts = res.counts()
    return {"counts": {lang: counts[k].tolist() for k, lang in enumerate(languages)},
            "total": {lang: int(counts[k].sum()) for k, lang in enumerate(languages)},
            "n_neurons": int(res.mask.any(0).sum()), "info": _plain(res.info)}


def overlap_entry(masks: dict[str, np.ndarray], languages: list[str]) -> dict:
    """Jaccard between every two criteria (C × C): overall, per language, per layer."""
    ov = criteria.overlaps(masks)
    L = next(iter(masks.values())).shape[1]
    return {"overall": ov["overall"].tolist(),
            "per_language": {lang: ov["per_language"][:, :, k].tolist() for k, lang in enumerate(languages)},
            "per_layer": [ov["per_layer"][:, :, i].tolist() for i in range(L)]}


def stability_section(masks: list[np.ndarray], languages: list[str]) -> dict:
    """Consecutive-checkpoint Jaccard of one criterion: overall (C−1), per language, per layer (L × (C−1))."""
    st = criteria.stability(masks)
    return {"overall": st["overall"].tolist(),
            "per_language": {lang: st["per_language"][:, k].tolist() for k, lang in enumerate(languages)},
            "per_layer": st["per_layer"].T.tolist()}


_SUMMARY = ("retrieval", "mexa", "bridge", "reach", "ilo")


def alignment_entry(scores: AlignmentScores, n_boot: int, seed: int, level: float) -> dict:
    """One scope (a layer, or all layers): the summary means with unit-bootstrap intervals, and the
    (K, K) / (K,) arrays they average."""
    boot = bootstrap_alignment(scores, n_boot, seed, level) if n_boot else None
    summary = scores.summary()
    out = {name: {"value": summary[name],
                  "ci": None if boot is None else [float(boot[name].lo), float(boot[name].hi)]}
           for name in _SUMMARY}
    out["cka"] = {"value": summary["cka"], "ci": None}  # not a mean over units: no interval
    out.update({"retrieval_pairs": scores.retrieval.tolist(), "mexa_pairs": scores.mexa.tolist(),
                "cka_pairs": scores.cka.tolist(), "bridge_per_language": scores.bridge.tolist(),
                "reach_per_language": scores.reach.tolist(), "ilo_per_language": scores.ilo.tolist()})
    return out
