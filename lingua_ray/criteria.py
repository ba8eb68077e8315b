"""Key-neuron criteria side by side: a registry of selectors, their overlaps and their stability.

Every criterion is a pure numpy function of stored per-unit statistics with its own typed settings;
docs/criteria.md gives each formula, its source, its defaults and where lingua_ray deviates.
Shapes: K languages, S units, L layers, F neurons per layer. A mask is bool (K, L, F): neuron
(layer, k) is in language l's set. Statistics arrive as per-layer readers ``layer -> (K, S, F)`` so
that nothing (K, S, L, F) need be in memory, or as their already-reduced sums.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from lingua_ray import metrics
from lingua_ray.config import ConfigError, KeyMode
from lingua_ray.registry import Registry

# The settings dataclasses are stdlib-only (criteria_settings.py) so lingua_ray.config can type
# ``reduce.lape`` etc. with them without importing numpy; re-exported here.
from lingua_ray.criteria_settings import (AveragePrecisionSettings, LapeSettings, LnaSettings,  # noqa: E402
                                          ZScoreSettings)


# --------------------------------------------------------------------------- inputs and results

LayerReader = Callable[[int], np.ndarray]  # layer index -> (K, S, F)

# Temporaries of the per-layer average precision stay under this many bytes.
DEFAULT_MAX_BYTES = 64 << 20


@dataclass
class CriterionInputs:
    """One checkpoint's stored statistics, as per-layer readers and/or already reduced arrays.

    mean: layer -> (K, S, F) per-unit mean at the capture point (Statistic.mean).
    act_pos_frac: layer -> (K, S, F) per-unit share of own tokens whose FFN activation-function
        output act_fn(gate(x)) is > 0 (LAPE's statistic; for BLOOM / GPT-2 / GPT-NeoX the capture
        point itself, elsewhere a statistic of its own).
    n_tokens: (K, S) own tokens per unit: p is token-weighted, as LAPE counts tokens, not units.
    sum_x, sum_x2: (K, L, F) the z-score sums of metrics.neuron_sums, when the reducer has them.
    act_prob: (K, L, F) token-weighted p, when already reduced.
    ap: (K, L, F) average precisions, when already computed (one task per layer).
    Whatever is derived from the readers is cached here, so criteria share one pass.
    """

    K: int
    S: int
    L: int
    F: int
    mean: Optional[LayerReader] = None
    act_pos_frac: Optional[LayerReader] = None
    n_tokens: Optional[np.ndarray] = None
    sum_x: Optional[np.ndarray] = None
    sum_x2: Optional[np.ndarray] = None
    act_prob: Optional[np.ndarray] = None
    ap: Optional[np.ndarray] = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_arrays(cls, mean=None, act_pos_frac=None, n_tokens=None) -> "CriterionInputs":
        """Inputs from in-memory (K, S, L, F) arrays (tests, small runs); n_tokens (K, S)."""
        ref = mean if mean is not None else act_pos_frac
        if ref is None:
            raise ValueError("from_arrays needs mean or act_pos_frac, each (K, S, L, F)")
        K, S, L, F = np.shape(ref)

        def reader(a):
            return None if a is None else (lambda layer: np.asarray(a)[:, :, layer, :])

        return cls(K, S, L, F, mean=reader(mean), act_pos_frac=reader(act_pos_frac),
                   n_tokens=None if n_tokens is None else np.asarray(n_tokens))

    def layer(self, what: str, layer: int) -> np.ndarray:
        """(K, S, F) of reader ``what`` ("mean" or "act_pos_frac") at ``layer``, shape-checked."""
        reader = getattr(self, what)
        if reader is None:
            raise ValueError(f"criterion inputs have no {what!r} reader; record that statistic")
        a = np.asarray(reader(layer))
        if a.shape != (self.K, self.S, self.F):
            raise ValueError(f"{what} reader gave shape {a.shape} at layer {layer}; "
                             f"expected (K, S, F) = {(self.K, self.S, self.F)}")
        return a


@dataclass
class CriterionResult:
    """mask (K, L, F) bool; score: what the criterion ranks by (its shape per criterion in
    docs/criteria.md); settings: those used, as a dict; info: thresholds, λ, counts (JSON-able
    scalars and lists); arrays: other named arrays worth storing beside the mask."""

    name: str
    mask: np.ndarray
    score: np.ndarray
    settings: dict
    info: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    def counts(self) -> np.ndarray:
        """int (K, L): set size per language per layer."""
        return metrics.key_counts(self.mask)


# --------------------------------------------------------------------------- statistics from the readers


def activation_probs(inputs: CriterionInputs) -> np.ndarray:
    """p (K, L, F): share of language l's own tokens with activation > 0, token-weighted:
    ``p[l] = Σ_s n_tokens[l, s] · act_pos_frac[l, s] / Σ_s n_tokens[l, s]``."""
    if inputs.act_prob is not None:
        return np.asarray(inputs.act_prob, dtype=np.float64)
    if "act_prob" not in inputs._cache:
        if inputs.n_tokens is None:
            raise ValueError("criterion inputs have no n_tokens (K, S): p is weighted by own tokens")
        n = np.asarray(inputs.n_tokens, dtype=np.float64)
        if n.shape != (inputs.K, inputs.S) or not (n.sum(1) > 0).all():
            raise ValueError(f"n_tokens must be (K, S) = {(inputs.K, inputs.S)} with tokens in every "
                             f"language; got shape {n.shape}")
        p = np.empty((inputs.K, inputs.L, inputs.F))
        for layer in range(inputs.L):
            frac = inputs.layer("act_pos_frac", layer)
            p[:, layer] = np.einsum("ks,ksf->kf", n, frac) / n.sum(1)[:, None]
        inputs._cache["act_prob"] = p
    return inputs._cache["act_prob"]


def zscore_sums(inputs: CriterionInputs) -> tuple[np.ndarray, np.ndarray]:
    """(sum_x, sum_x2), each (K, L, F): given, or from the mean reader in two passes (norms, sums)."""
    if inputs.sum_x is not None and inputs.sum_x2 is not None:
        return np.asarray(inputs.sum_x), np.asarray(inputs.sum_x2)
    if "sums" not in inputs._cache:
        sq = np.zeros((inputs.K, inputs.S))
        for layer in range(inputs.L):
            a = inputs.layer("mean", layer).astype(np.float64)
            sq += np.einsum("ksf,ksf->ks", a, a)
        norms = np.sqrt(sq)
        sx = np.empty((inputs.K, inputs.L, inputs.F))
        sx2 = np.empty_like(sx)
        for layer in range(inputs.L):
            sx[:, layer], sx2[:, layer] = metrics.neuron_sums(inputs.layer("mean", layer), norms)
        inputs._cache["sums"] = (sx, sx2)
    return inputs._cache["sums"]


def average_precision_layer(a_layer, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """AP (K, F): how well neuron k's per-unit responses a_layer (K, S, F) rank language l's S units
    above the other languages' (K-1)·S, exactly as sklearn's average_precision_score.

    AP = (1/S) Σ over positives i of precision at the lowest score tied with i's score, i.e.
    Σ_n (R_n - R_{n-1}) P_n over the distinct score thresholds. One stable sort per neuron is
    shared by all K languages; neurons go in blocks whose temporaries stay under ``max_bytes``.
    """
    a = np.asarray(a_layer)
    if a.ndim != 3:
        raise ValueError(f"a_layer must be (K, S, F); got shape {a.shape}")
    K, S, F = a.shape
    N = K * S
    X = a.reshape(N, F)
    lang = np.repeat(np.arange(K), S)
    pos_idx = np.arange(N)[None, :]
    out = np.empty((K, F))
    step = max(1, min(F, int(max_bytes) // (80 * N)))  # ~10 (step, N) 8-byte temporaries
    for f0 in range(0, F, step):
        # (neurons, units), each neuron's row contiguous: its sums do not depend on the block width
        blk = np.ascontiguousarray(np.asarray(X[:, f0 : f0 + step], dtype=np.float64).T)
        if not np.isfinite(blk).all():
            raise ValueError(f"non-finite responses among neurons {f0}..{f0 + blk.shape[0] - 1}")
        order = np.argsort(-blk, axis=1, kind="stable")
        srt = np.take_along_axis(blk, order, axis=1)
        is_end = np.ones(srt.shape, dtype=bool)  # last position of a run of tied scores
        is_end[:, :-1] = srt[:, :-1] != srt[:, 1:]
        # every position -> the last position of its tie group (a reversed running minimum)
        end = np.minimum.accumulate(np.where(is_end, pos_idx, N)[:, ::-1], axis=1)[:, ::-1]
        lab = lang[order]
        for l in range(K):
            pos = lab == l
            tp = np.cumsum(pos, axis=1)
            precision_at_end = np.take_along_axis(tp, end, axis=1) / (end + 1.0)
            out[l, f0 : f0 + blk.shape[0]] = np.where(pos, precision_at_end, 0.0).sum(1) / S
    return out


def average_precisions(inputs: CriterionInputs, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """AP (K, L, F), given or one layer at a time from the mean reader."""
    if inputs.ap is not None:
        return np.asarray(inputs.ap, dtype=np.float64)
    if "ap" not in inputs._cache:
        inputs._cache["ap"] = np.stack([average_precision_layer(inputs.layer("mean", i), max_bytes)
                                        for i in range(inputs.L)], axis=1)
    return inputs._cache["ap"]


# --------------------------------------------------------------------------- shared rules


def quantile_value(values: np.ndarray, ratio: float, what: str) -> float:
    """The k-th smallest of ``values`` with k = round(n · ratio), as ``tensor.kthvalue`` in the
    LAPE and LNA scripts (Python's round: halves go to even)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    k = round(flat.size * ratio)
    if not 1 <= k <= flat.size:
        raise ValueError(f"{what}={ratio} picks rank {k} of {flat.size} values; need a ratio in (0, 1]")
    return float(np.partition(flat, k - 1)[k - 1])


def lowest(score: np.ndarray, rate: float, what: str) -> np.ndarray:
    """bool mask (shape of score) of the round(n · rate) lowest scores; ties to the lower flat
    (layer, neuron) index (the scripts' topk leaves ties unspecified)."""
    n = round(score.size * rate)
    if not 0 <= n <= score.size:
        raise ValueError(f"{what}={rate} keeps {n} of {score.size} neurons; need a rate in [0, 1]")
    sel = np.zeros(score.size, dtype=bool)
    sel[np.argsort(score.ravel(), kind="stable")[:n]] = True
    return sel.reshape(score.shape)


def _extremes_per_language(values: np.ndarray, n: int, largest: bool) -> np.ndarray:
    flat = values.reshape(values.shape[0], -1)
    order = np.argsort(-flat if largest else flat, axis=1, kind="stable")[:, :n]
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(values.shape)


# --------------------------------------------------------------------------- the criteria


def select_zscore(inputs: CriterionInputs, s: ZScoreSettings) -> CriterionResult:
    """score = z (K, L, F) of the within-language cosine contribution (metrics.py)."""
    sx, sx2 = zscore_sums(inputs)
    score, z = metrics.key_neuron_zscores(sx, sx2, inputs.S)
    if KeyMode(s.mode) is KeyMode.zscore:
        mask = metrics.key_neuron_masks(z, s.tau)
    elif s.top_fraction is None or not 0 < s.top_fraction < 1:
        raise ValueError(f"zscore mode=top_fraction needs top_fraction in (0, 1), got {s.top_fraction}")
    else:
        mask = metrics.top_fraction_masks(z, s.top_fraction)
    return CriterionResult("zscore", mask, z, asdict(s), {}, {"cosine_score": score})


def select_lape(inputs: CriterionInputs, s: LapeSettings) -> CriterionResult:
    """score = entropy H (L, F) of p̃ = p / Σ_l p, +inf where no p exceeds the filter quantile."""
    p = activation_probs(inputs)
    total = p.sum(0)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)  # 0/0 -> 0, as the script
    H = -(q * np.log(q, out=np.zeros_like(q), where=q > 0)).sum(0)  # 0 · ln 0 = 0
    filter_value = quantile_value(p, s.filter_rate, "lape.filter_rate")
    dropped = ~(p > filter_value).any(0)
    H[dropped] = np.inf
    selected = lowest(H, s.top_rate, "lape.top_rate")
    bar = quantile_value(p, s.activation_bar_ratio, "lape.activation_bar_ratio")
    mask = selected[None] & (p > bar)
    info = {"filter_value": filter_value, "activation_bar": bar, "n_selected": int(selected.sum()),
            "n_dropped": int(dropped.sum()), "n_selected_dropped": int((selected & dropped).sum())}
    return CriterionResult("lape", mask, H, asdict(s), info)


def select_average_precision(inputs: CriterionInputs, s: AveragePrecisionSettings) -> CriterionResult:
    """score = AP (K, L, F); per language the n_top highest (and n_bottom lowest) over all L·F."""
    ap = average_precisions(inputs)
    total = inputs.L * inputs.F
    if not (0 <= s.n_top <= total and 0 <= s.n_bottom <= total):
        raise ValueError(f"average_precision n_top={s.n_top}, n_bottom={s.n_bottom} must be in "
                         f"[0, L·F = {total}]")
    mask = _extremes_per_language(ap, s.n_top, largest=True)
    if s.n_bottom:
        mask |= _extremes_per_language(ap, s.n_bottom, largest=False)
    return CriterionResult("average_precision", mask, ap, asdict(s), {})


def _lna_parts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(H / ln K, max_l p, m) of the LNA score; H as the released calc_entropy computes it."""
    K = p.shape[0]
    total = p.sum(0)
    q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / K)  # no activation: uniform
    q = np.maximum(q, 1e-12)
    q = q / q.sum(0)
    H = -(q * np.log(q + 1e-30)).sum(0) / math.log(K)
    m = sum(1.0 / i for i in range(1, K + 1)) / K
    return H, p.max(0), m


def select_lna(inputs: CriterionInputs, s: LnaSettings) -> CriterionResult:
    """score = H/ln K − λ·max_l p_l / m (L, F); λ from the autosweep when ``lam`` is None."""
    p = activation_probs(inputs)
    K = p.shape[0]
    if K < 2:
        raise ValueError("LNA needs K >= 2 languages (its entropy is divided by ln K)")
    Hn, pmax, m = _lna_parts(p)
    bar = quantile_value(p, s.activation_bar_ratio, "lna.activation_bar_ratio")
    trace: list = []

    def masked(lam: float):
        score = Hn - lam * pmax / m
        mask = lowest(score, s.top_rate, "lna.top_rate")[None] & (p > bar)
        trace.append([float(lam), int((mask.sum(0) == K).sum())])  # neurons in all K languages
        return score, mask

    if s.lam is not None:
        lam = float(s.lam)
    else:  # their autosweep: keep the last λ at which no neuron belongs to all K languages
        lam, lo, hi = None, float(s.lam_lo), float(s.lam_hi)
        for edge in (lo, hi):
            if masked(edge)[1].sum(0).max(initial=0) < K:
                lam = edge
        it = 0
        while hi - lo > s.lam_eps and it < s.max_iter:
            it += 1
            mid = (lo + hi) / 2.0
            if masked(mid)[1].sum(0).max(initial=0) < K:
                lam, lo = mid, mid
            else:
                hi = mid
        if lam is None:
            raise ValueError(f"lna: no λ in [{s.lam_lo}, {s.lam_hi}] leaves every neuron out of at least "
                             "one language; set criteria lna.lam, or lower lna.lam_lo / raise lna.lam_hi")
    score, mask = masked(lam)
    return CriterionResult("lna", mask, score, asdict(s),
                           {"lam": lam, "m": m, "activation_bar": bar, "sweep": trace[:-1]})


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Criterion:
    """One registered criterion: its settings type, its function, what it reads, its source."""

    name: str
    settings_type: type
    run: Callable[[CriterionInputs, Any], CriterionResult]
    needs: tuple
    source: str

    def settings(self, settings=None):
        """The settings instance: None -> defaults, a dict -> fields, an instance -> itself."""
        if settings is None:
            return self.settings_type()
        if isinstance(settings, self.settings_type):
            return settings
        if isinstance(settings, Mapping) or is_dataclass(settings):
            d = dict(settings) if isinstance(settings, Mapping) else asdict(settings)
            try:
                return self.settings_type(**d)
            except TypeError as e:
                raise ConfigError(f"criterion {self.name!r} settings {d}: {e}") from None
        raise ConfigError(f"criterion {self.name!r} takes {self.settings_type.__name__} settings, "
                          f"got {type(settings).__name__}")

    def select(self, inputs: CriterionInputs, settings=None) -> CriterionResult:
        return self.run(inputs, self.settings(settings))


CRITERIA: Registry[Criterion] = Registry("key-neuron criterion", error=ConfigError,
                                         hint="Criteria are registered in lingua_ray/criteria.py.")
for _c in (
    Criterion("zscore", ZScoreSettings, select_zscore, ("mean",), "Zeng et al. 2025 (METHOD.md)"),
    Criterion("lape", LapeSettings, select_lape, ("act_pos_frac", "n_tokens"),
              "Tang et al., ACL 2024; RUCAIBox/Language-Specific-Neurons identify.py"),
    Criterion("average_precision", AveragePrecisionSettings, select_average_precision, ("mean",),
              "Kojima et al., NAACL 2024; kojima-takeshi188/lang_neuron"),
    Criterion("lna", LnaSettings, select_lna, ("act_pos_frac", "n_tokens"),
              "Zhang et al., AAAI 2026; NJUNLP/Language-Neurons-Alignment"),
):
    CRITERIA.register(_c.name, _c)


def select(name: str, inputs: CriterionInputs, settings=None) -> CriterionResult:
    """Run the registered criterion ``name`` (unknown -> ConfigError listing the valid ones)."""
    return CRITERIA.get(name).select(inputs, settings)


# --------------------------------------------------------------------------- overlaps and stability


def jaccard(a, b, axis=None) -> np.ndarray:
    """|a ∧ b| / |a ∨ b| of two boolean masks, reduced over ``axis`` (all by default); NaN where
    both are empty (the overlap of two empty sets is undefined, not 0 or 1)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    inter = (a & b).sum(axis=axis)
    union = (a | b).sum(axis=axis)
    return np.divide(inter, union, out=np.full(np.shape(union), np.nan), where=union > 0)


def overlaps(masks: Mapping[str, np.ndarray]) -> dict:
    """Jaccard between every two criteria's (K, L, F) masks.

    Returns ``names`` (C,) and (C, C, ...) arrays: ``overall`` over all (l, layer, k);
    ``per_language`` (C, C, K) over (layer, k); ``per_layer`` (C, C, L) over (l, k);
    ``per_language_layer`` (C, C, K, L) over k.
    """
    names = list(masks)
    ms = [np.asarray(masks[n], dtype=bool) for n in names]
    axes = {"overall": None, "per_language": (1, 2), "per_layer": (0, 2), "per_language_layer": 2}
    out: dict = {"names": names}
    for key, ax in axes.items():
        out[key] = np.array([[jaccard(x, y, ax) for y in ms] for x in ms])
    return out


def stability(masks: Sequence[np.ndarray]) -> dict:
    """Jaccard between consecutive checkpoints' (K, L, F) masks of one criterion, in step order.

    Returns ``overall`` (T-1,), ``per_language`` (T-1, K) and ``per_layer`` (T-1, L).
    """
    ms = [np.asarray(m, dtype=bool) for m in masks]
    pairs = list(zip(ms[:-1], ms[1:]))
    return {"overall": np.array([jaccard(a, b) for a, b in pairs]),
            "per_language": np.array([jaccard(a, b, (1, 2)) for a, b in pairs]).reshape(len(pairs), -1),
            "per_layer": np.array([jaccard(a, b, (0, 2)) for a, b in pairs]).reshape(len(pairs), -1)}


__all__ = [
    "AveragePrecisionSettings", "CRITERIA", "Criterion", "CriterionInputs", "CriterionResult",
    "DEFAULT_MAX_BYTES", "LapeSettings", "LnaSettings", "ZScoreSettings", "activation_probs",
    "average_precision_layer", "average_precisions", "jaccard", "lowest", "overlaps", "quantile_value",
    "select", "select_average_precision", "select_lape", "select_lna", "select_zscore", "stability",
    "zscore_sums",
]
