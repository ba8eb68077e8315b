"""How the measurements move across checkpoints (the paper's claims c and d); pure numpy.

Input: the per-checkpoint results entries (results.json ``checkpoints[i]``, in training order,
C of them) and, for the overlaps between checkpoints, a function ``label -> bool (K, L, F)`` key
mask (the reduce stage has it as ``store.read_key_mask``). Output: the ``evolution`` section of
results.json (schema ``lingua_ray.results_evolution.Evolution``, documented in docs/results.md):

- per-layer LRDS and SADS as layer × checkpoint matrices (L × C), values of the entries;
- key-neuron counts per layer × checkpoint for each language (L × C);
- the share of key neurons in the first k and the last k layers (and both ends together) against
  the share a uniform spread over layers gives (k/L, 2k/L), per language and pooled;
- the Jaccard overlap of each language's key set between consecutive checkpoints, with the
  overlap two random sets of the same per-layer sizes would have.

The interval of a share is a **Wilson score interval** for a binomial proportion, and its
p-value an **exact two-sided binomial test** of share = uniform share (the small-p-values rule
of ``scipy.stats.binomtest``). Both treat each key neuron as one independent draw of a layer:
they reflect the finite number of key neurons, not the sampling of the text units that chose
them (that needs key neurons re-selected on resampled units, which reduce does not keep). So
the interval is deterministic and needs no seed.

Only two masks are held at a time (C may be large and K·L·F bools per checkpoint are not small).
``identical_checkpoints`` groups checkpoints whose weights hash the same.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_K", "INTERVAL", "edge_k", "edge_layers", "wilson_interval", "binomial_p_value", "share_stat",
           "edge_share", "jaccard", "jaccard_chance", "summarise", "identical_checkpoints", "identical_message"]

DEFAULT_K = 3
INTERVAL = "wilson"


# ---------------------------------------------------------------- which layers are "the ends"


def edge_k(k_requested: int, n_layers: int) -> int:
    """Layers at each end actually used: ``min(k_requested, (L - 1) // 2)``, at least 1.

    So the first and the last k layers never overlap and, for L ≥ 3, leave a middle to compare
    with (L = 4 → k = 1). With L ≤ 2 there is no middle: k = 1 and the "ends" are every layer.
    """
    if k_requested < 1:
        raise ValueError(f"evolution k must be >= 1 layer at each end, got {k_requested}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return max(1, min(int(k_requested), (n_layers - 1) // 2))


def edge_layers(k: int, n_layers: int) -> dict[str, list[int]]:
    """Layer indices of ``first`` (0..k-1), ``last`` (L-k..L-1) and ``ends`` (their union)."""
    first = list(range(min(k, n_layers)))
    last = list(range(max(0, n_layers - k), n_layers))
    return {"first": first, "last": last, "ends": sorted(set(first) | set(last))}


# ---------------------------------------------------------------- binomial share, interval, test


def wilson_interval(x: int, n: int, level: float) -> Optional[tuple[float, float]]:
    """Wilson score interval of the proportion x / n at coverage ``level``; None when n = 0."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clip rounding only: the exact interval lies in [0, 1] and contains p
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def binomial_p_value(x: int, n: int, p0: float) -> Optional[float]:
    """Exact two-sided binomial p-value of x successes in n draws under success probability p0.

    Sums P(X = i) over every i no more likely than the observed x (relative tolerance 1e-7, as
    scipy does). The log pmf is built by the ratio recursion, vectorised over i = 0..n. None
    when n = 0.
    """
    if n <= 0:
        return None
    if p0 <= 0.0 or p0 >= 1.0:  # a degenerate null: the observation is either certain or impossible
        return 1.0 if x == round(p0 * n) else 0.0
    i = np.arange(n, dtype=np.float64)
    steps = np.log(n - i) - np.log(i + 1) + math.log(p0 / (1 - p0))  # log P(i+1) - log P(i)
    logpmf = n * math.log1p(-p0) + np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(logpmf - logpmf.max())
    p = pmf[pmf <= pmf[x] * (1 + 1e-7)].sum() / pmf.sum()
    return float(min(1.0, p))


def share_stat(count: int, n: int, uniform: float, level: float) -> dict:
    """One ``ShareStat``: ``count`` of the ``n`` key neurons lie in layers whose uniform share is ``uniform``."""
    ci = wilson_interval(count, n, level)
    return {"count": int(count), "share": None if n == 0 else count / n, "uniform": float(uniform),
            "ci": None if ci is None else [ci[0], ci[1]], "p_value": binomial_p_value(count, n, uniform)}


def edge_share(counts: Sequence[int], k: int, level: float) -> dict:
    """One ``EdgeShare`` from per-layer key counts (length L) and the k in use."""
    c = np.asarray(counts, dtype=np.int64)
    L, n = len(c), int(c.sum())
    out: dict = {"n_key": n}
    for part, layers in edge_layers(k, L).items():
        out[part] = share_stat(int(c[layers].sum()), n, len(layers) / L, level)
    return out


# ---------------------------------------------------------------- overlap between checkpoints


def jaccard(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """|A ∩ B| / |A ∪ B| of two bool masks of one shape; None when both are empty."""
    union = int(np.count_nonzero(a | b))
    return None if union == 0 else int(np.count_nonzero(a & b)) / union


def jaccard_chance(a_counts: Sequence[int], b_counts: Sequence[int], n_neurons: int) -> Optional[float]:
    """E|A∩B| / E|A∪B| for random sets with the given per-layer sizes among ``n_neurons`` per layer.

    E|A∩B| = Σ_layer a·b / F (independent uniform draws within each layer); a ratio of
    expectations, close to the expected ratio when the sets are not tiny. None when both are empty.
    """
    a, b = np.asarray(a_counts, dtype=np.float64), np.asarray(b_counts, dtype=np.float64)
    inter = float((a * b).sum()) / n_neurons
    union = float(a.sum() + b.sum()) - inter
    return None if union <= 0 else inter / union


# ---------------------------------------------------------------- the section


def _counts(entry: dict, lang: str) -> list[int]:
    return [int(x) for x in entry["key_neurons"]["counts"][lang]]


def summarise(entries: list[dict], masks: Callable[[str], np.ndarray] | None, languages: Sequence[str],
              k: int = DEFAULT_K, level: float = 0.95) -> dict:
    """The ``evolution`` section of results.json from C checkpoint entries (training order).

    ``entries[c]`` needs ``label``, ``per_layer.lrds/sads[layer].value`` and
    ``key_neurons.counts[language]`` (length L). ``masks(label)`` returns that checkpoint's bool
    key mask (K, L, F) in ``languages`` order; with ``masks=None`` the Jaccard fields are null
    (everything else needs only the entries). ``k``: layers at each end requested (see edge_k);
    ``level``: coverage of the Wilson intervals. Raises ValueError naming the checkpoint when a
    mask has the wrong shape or disagrees with the entry's counts.
    """
    if not entries:
        raise ValueError("evolution.summarise needs at least one checkpoint entry")
    if not 0 < level < 1:
        raise ValueError(f"evolution level must be in (0, 1), got {level}")
    langs = list(languages)
    labels = [e["label"] for e in entries]
    L = len(entries[0]["per_layer"]["lrds"])
    kk = edge_k(k, L)
    for e in entries:
        if len(e["per_layer"]["lrds"]) != L or any(len(_counts(e, lang)) != L for lang in langs):
            raise ValueError(f"checkpoint {e['label']!r} does not have L = {L} layers like {labels[0]!r}")

    def matrix(metric: str) -> list[list[float]]:
        return [[float(e["per_layer"][metric][layer]["value"]) for e in entries] for layer in range(L)]

    key_counts = {lang: np.array([_counts(e, lang) for e in entries]).T.tolist() for lang in langs}  # L × C
    edge = {lang: [edge_share(_counts(e, lang), kk, level) for e in entries] for lang in langs}
    pooled = [edge_share(np.sum([_counts(e, lang) for lang in langs], axis=0), kk, level) for e in entries]
    jac = chance = None
    if masks is not None:
        jac, chance = {lang: [] for lang in langs}, {lang: [] for lang in langs}
        prev = None
        for e in entries:
            m = _checked_mask(masks(e["label"]), e, langs, L)
            if prev is not None:
                F = m.shape[2]
                for i, lang in enumerate(langs):
                    jac[lang].append(jaccard(prev[0][i], m[i]))
                    chance[lang].append(jaccard_chance(_counts(prev[1], lang), _counts(e, lang), F))
            prev = (m, e)
    return {"checkpoints": labels, "k_requested": int(k), "k": kk, "interval": INTERVAL, "ci_level": float(level),
            "per_layer_lrds": matrix("lrds"), "per_layer_sads": matrix("sads"), "key_counts": key_counts,
            "edge_share": edge, "edge_share_pooled": pooled, "jaccard": jac, "jaccard_chance": chance}


def _checked_mask(m, entry: dict, langs: list[str], L: int) -> np.ndarray:
    m = np.asarray(m)
    label = entry["label"]
    if m.ndim != 3 or m.shape[:2] != (len(langs), L):
        raise ValueError(f"key mask of checkpoint {label!r} has shape {m.shape}, want (K={len(langs)}, L={L}, F)")
    if m.dtype != bool:
        raise ValueError(f"key mask of checkpoint {label!r} is {m.dtype}, want bool")
    got = m.sum(axis=2)
    for i, lang in enumerate(langs):
        if got[i].tolist() != _counts(entry, lang):
            raise ValueError(f"key mask of checkpoint {label!r} has per-layer counts {got[i].tolist()} for "
                             f"{lang!r} but its results entry says {_counts(entry, lang)}; re-run reduce")
    return m


# ---------------------------------------------------------------- identical checkpoints


def identical_checkpoints(fingerprints: dict[str, dict]) -> list[list[str]]:
    """Groups (≥ 2 labels, in the dict's order) of checkpoints whose ``weights_sha256`` are equal.

    ``fingerprints``: label → the fingerprint recorded with it (``store.checkpoint_fingerprints()``).
    A missing or null hash matches nothing. Groups are ordered by their first label.
    """
    by_hash: dict[str, list[str]] = {}
    for label, fp in fingerprints.items():
        h = (fp or {}).get("weights_sha256")
        if h:
            by_hash.setdefault(h, []).append(label)
    return [g for g in by_hash.values() if len(g) > 1]


def identical_message(groups: Iterable[Sequence[str]]) -> str:
    """One log line naming the groups, e.g. for ``logging.warning``; empty when there are none."""
    groups = [list(g) for g in groups]
    if not groups:
        return ""
    text = "; ".join(" = ".join(g) for g in groups)
    return (f"identical checkpoints (same weights_sha256): {text}; their scores measure the same weights "
            "twice (check the checkpoint paths or revisions)")
