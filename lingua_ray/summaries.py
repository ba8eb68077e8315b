"""LRDS, SADS, B, D, bootstrap intervals and permutation p-values from per-layer summaries.

No (N, N) matrix (N = K·S) exists here, in a layer task or on the driver. docs/metrics.md
("Streamed summaries") derives every formula with these symbols:

* a_λ[l, s] (F,): layer λ's activations of language l, unit s; a layer is read in unit blocks
  ``read_block(s0, s1) -> float32 (K, s1 - s0, F)``.
* q_λ (K, S) squared norms ‖a_λ[l, s]‖² (pass 1); ν = sqrt(Σ_λ q_λ) the all-layer norms ‖v‖;
  c = #{λ: q_λ > 0} (:class:`Norms`).
* scope weights r (K, S) per layer: overall 1/ν; layer 1/sqrt(q_λ); balanced 1/sqrt(q_λ c).
  A scope's cosine is ``C[(l,s),(m,t)] = Σ_λ r_λ[l,s] r_λ[m,t] a_λ[l,s]·a_λ[m,t]``.
* per scope, (S, S): ``A[s,t] = Σ_{l,m} C[(l,s),(m,t)]`` (all pairs, from the language-summed
  vectors Y[s] = Σ_l r a) and ``Wl[s,t] = Σ_l C[(l,s),(l,t)]`` (same-language pairs); overall
  only, (K, K): ``U[l,m] = Σ_s C[(l,s),(m,s)]`` and the key-neuron sums sum_x = Z, sum_x2.

Pass 2 (:func:`layer_summary`) turns one layer into its :class:`LayerSummary`; the driver adds them
up layer by layer (reduce.CheckpointSums); lingua_ray.scores turns (S, S) summaries into scores,
intervals and p-values. Results equal metrics.scores_from_grams,
uncertainty.bootstrap_ci and uncertainty.permutation_test on the Gram path to rounding (tested);
the permutation tests run on a seeded subsample of at most ``perm_max_rows // K`` units (all units
when K·S fits: then they equal today's to rounding as well).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

import numpy as np

from lingua_ray import metrics
from lingua_ray.scores import ScopeStats, scope_stats, sub_cosine

__all__ = ["BlockReader", "LayerSummary", "Norms", "Plan", "layer_sq_norms", "layer_summary", "make_plan"]

BlockReader = Callable[[int, int], np.ndarray]  # (s0, s1) -> float32 (K, s1 - s0, F), one layer

DEFAULT_MAX_TASK_BYTES = 1 << 30  # 1 GiB of arrays per layer task (the interpreter comes on top)
DEFAULT_PERM_MAX_ROWS = 2048  # rows K·S_p of the permutation tests' subsample: 32 MiB per cosine
_CHUNK = 1 << 22  # float64 elements of one temporary in chunked loops (32 MiB)
_F64 = 8


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How one checkpoint is reduced; small and picklable (sent to every task).

    block: units per block (a task holds two (K, block, F) float32 blocks at most);
    perm_units: sorted unit indices the permutation tests use (all S, or a seeded subsample).
    """

    K: int
    S: int
    F: int
    block: int
    n_boot: int = 1000
    n_perm: int = 1000
    seed: int = 0
    level: float = 0.95
    per_layer: bool = True
    perm_units: tuple = ()
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES

    def blocks(self) -> list[tuple[int, int]]:
        return [(s0, min(s0 + self.block, self.S)) for s0 in range(0, self.S, self.block)]

    @property
    def S_p(self) -> int:
        return len(self.perm_units)

    def task_bytes(self, block: Optional[int] = None) -> int:
        """Modelled peak bytes of the arrays of one layer task (docs/metrics.md, "Memory")."""
        return _fixed_bytes(self) + _block_bytes(self.K, self.F, self.block if block is None else block)


def _fixed_bytes(p: Plan) -> int:
    """Bytes that do not depend on the block: (S, S) pieces, resampling draws and chunks, subsample."""
    S, K, Np = p.S, p.K, p.K * p.S_p
    elems = 6 * S * S + 2 * K * p.F  # A, Wl of three scopes; the neuron sums
    if p.n_boot:  # draw counts, one chunk of weighted products, X = A − Wl
        elems += p.n_boot * S + 4 * min(p.n_boot * S, max(_CHUNK, S)) + S * S
    if p.n_perm:  # subsample (float32) and its F-chunk, Gram and cosine, draws, one gather chunk
        gather = max(K * p.S_p ** 2, p.S_p * K * K)
        elems += Np * p.F // 2 + min(Np * p.F, max(_CHUNK, Np)) + 2 * Np * Np + 3 * p.n_perm * Np
        elems += 2 * min(p.n_perm * gather, max(_CHUNK, gather))
    return elems * _F64


def _block_bytes(K: int, F: int, b: int) -> int:
    """Bytes that grow with the block b: two float32 blocks, their language-summed float64 Y
    (3 scopes × 2), two float64 language rows, the (b, b) language Gram with its scaled copy, and
    one chunk of the same-unit products U."""
    return 2 * K * b * F * 4 + (8 * b * F + 2 * b * b + min(K * b * F, max(_CHUNK, K * F))) * _F64


def make_plan(K: int, S: int, F: int, *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
              level: float = 0.95, per_layer: bool = True, max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
              perm_max_rows: int = DEFAULT_PERM_MAX_ROWS, unit_block: int = 1) -> Plan:
    """The largest unit block that keeps a task within ``max_task_bytes``; the permutation subsample.

    S_p = S when K·S <= perm_max_rows, else max(2, perm_max_rows // K) units drawn without
    replacement by ``default_rng(SeedSequence([seed, 1]))`` (independent of the permutations,
    which use ``default_rng(seed)`` as uncertainty.permutation_test does). Blocks are whole
    multiples of the store's ``unit_block`` where possible, so each read touches whole chunks.
    """
    if K < 2 or S < 2 or F < 1:
        raise ValueError(f"need K >= 2 languages, S >= 2 units, F >= 1 neurons; got K={K}, S={S}, F={F}")
    if not 0 < level < 1 or n_boot < 0 or n_perm < 0:
        raise ValueError(f"need 0 < level < 1, n_boot >= 0, n_perm >= 0; got {level}, {n_boot}, {n_perm}")
    if K * S <= perm_max_rows:
        units = tuple(range(S))
    else:
        S_p = max(2, perm_max_rows // K)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        units = tuple(int(u) for u in np.sort(rng.choice(S, size=S_p, replace=False)))
    plan = Plan(K, S, F, 1, int(n_boot), int(n_perm), int(seed), float(level), bool(per_layer),
                units if n_perm else (), int(max_task_bytes))
    room = max_task_bytes - _fixed_bytes(plan)
    if _block_bytes(K, F, 1) > room:
        need = _fixed_bytes(plan) + _block_bytes(K, F, 1)
        raise ValueError(f"reduce.max_task_bytes={max_task_bytes:,} is too small for K={K}, S={S}, F={F} "
                         f"(n_boot={n_boot}, {len(plan.perm_units)} permutation units): it needs at least "
                         f"{need:,}; raise it or lower reduce.perm_max_rows")
    lo, hi = 1, S  # the largest block that fits: _block_bytes grows with b
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _block_bytes(K, F, mid) <= room else (lo, mid - 1)
    b = lo
    if 1 < unit_block <= b < S:
        b -= b % unit_block
    return replace(plan, block=int(b))


# --------------------------------------------------------------------------- pass 1: norms


def _sq_norms(x: np.ndarray) -> np.ndarray:
    """(K, b) float64 Σ_f x² of a float32 block (K, b, F), one language at a time."""
    out = np.empty(x.shape[:2])
    for l in range(x.shape[0]):
        xl = x[l].astype(np.float64)
        np.einsum("sf,sf->s", xl, xl, out=out[l])
    return out


def _read(read_block: BlockReader, plan: Plan, s0: int, s1: int) -> np.ndarray:
    x = read_block(s0, s1)
    if x.shape != (plan.K, s1 - s0, plan.F):
        raise ValueError(f"read_block({s0}, {s1}) gave shape {x.shape}; want {(plan.K, s1 - s0, plan.F)}")
    return x


def layer_sq_norms(read_block: BlockReader, plan: Plan) -> np.ndarray:
    """Pass 1: q (K, S) float64 squared norms of one layer, block by block."""
    q = np.empty((plan.K, plan.S))
    for s0, s1 in plan.blocks():
        q[:, s0:s1] = _sq_norms(_read(read_block, plan, s0, s1))
    return q


@dataclass(frozen=True)
class Norms:
    """From pass 1: ν (K, S) all-layer norms, c (K, S) non-zero layer counts, layer_sq (L,) Σ q_λ."""

    nu: np.ndarray
    c: np.ndarray
    layer_sq: np.ndarray

    @classmethod
    def from_layers(cls, sq_layers: Iterable[np.ndarray]) -> "Norms":
        """Add up per-layer q_λ (K, S) in layer order, holding two (K, S) accumulators only."""
        total = count = None
        layer_sq = []
        for q in sq_layers:
            q = np.asarray(q, dtype=np.float64)
            total = q.copy() if total is None else total + q
            count = (q > 0).astype(np.int64) if count is None else count + (q > 0)
            layer_sq.append(q.sum())
        if total is None:
            raise ValueError("no layers: need the squared norms of at least one layer")
        bad = ~(total > 0) | ~np.isfinite(total)
        if bad.any():
            l, s = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"unit vector v has zero or non-finite norm at language index {l}, unit index {s}: "
                             f"squared norm {total[l, s]!r} (missing or all-zero activations?)")
        return cls(np.sqrt(total), count, np.asarray(layer_sq))

    @property
    def L(self) -> int:
        return len(self.layer_sq)

    @property
    def c_constant(self) -> bool:
        return bool(self.c.min() == self.c.max())


# --------------------------------------------------------------------------- pass 2: one layer


@dataclass
class LayerSummary:
    """One layer's additive pieces (overall and balanced (S, S), U (K, K), neuron sums (K, F)), its
    per-layer scores (``per_layer``) and the raw Gram of the permutation subsample (K·S_p, K·S_p)."""

    layer: int
    A: np.ndarray
    Wl: np.ndarray
    A_bal: np.ndarray
    Wl_bal: np.ndarray
    U: np.ndarray
    sum_x: np.ndarray
    sum_x2: np.ndarray
    per_layer: Optional["ScopeStats"] = None
    perm_gram: Optional[np.ndarray] = None


def _weights(q: np.ndarray, norms: Norms, s0: int, s1: int, layer: int, per_layer: bool, bal: bool) -> dict:
    """Scope weights r (K, b) of one block. A unit with q = 0 has no direction in this layer: weight 0
    (balanced), or an error when per-layer scores are asked for (as metrics.cosine_from_gram)."""
    n = np.sqrt(q)
    if per_layer and not (n > 0).all():
        l, s = (int(v) for v in np.argwhere(~(n > 0))[0])
        raise ValueError(f"zero or non-finite norm at language index {l}, unit index {s0 + s} [layer {layer}]: "
                         "cosine similarity is undefined for this unit (is its activation all zeros?)")
    r_layer = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    r = {"overall": 1.0 / norms.nu[:, s0:s1], "layer": r_layer}
    if bal:
        r["balanced"] = r_layer / np.sqrt(np.maximum(norms.c[:, s0:s1], 1))
    return r


def _summed(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Y (b, F) float64 = Σ_l r[l, s] x[l, s]."""
    y = np.zeros(x.shape[1:])
    for l in range(x.shape[0]):
        y += r[l][:, None] * x[l]
    return y


def _same_unit(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """U (K, K) = Σ_s r[l,s] r[m,s] x[l,s]·x[m,s], in unit chunks of bounded float64 size."""
    K, b, F = x.shape
    U = np.zeros((K, K))
    step = max(1, _CHUNK // (K * F))
    for c0 in range(0, b, step):
        z = (x[:, c0 : c0 + step] * r[:, c0 : c0 + step, None]).reshape(K, -1)  # float64 (promotion)
        U += z @ z.T
    return U


def _add_pair(A: dict, Wl: dict, xi, xj, ri: dict, rj: dict, Yi: dict, Yj: dict, I: slice, J: slice) -> None:
    for sc in A:
        A[sc][I, J] = Yi[sc] @ Yj[sc].T
    tmp = np.empty((I.stop - I.start, J.stop - J.start))
    for l in range(xi.shape[0]):
        li = xi[l].astype(np.float64)
        lj = li if xj is xi else xj[l].astype(np.float64)
        g = li @ lj.T  # raw same-language Gram block; for I = J a symmetric product (half the work)
        for sc in Wl:
            np.multiply(g, ri[sc][l][:, None], out=tmp)
            tmp *= rj[sc][l][None, :]
            Wl[sc][I, J] += tmp
    if I != J:
        for M in (*A.values(), *Wl.values()):
            M[J, I] = M[I, J].T


def _sub_gram(sub: np.ndarray) -> np.ndarray:
    """Raw Gram (K·S_p, K·S_p) float64 of the float32 subsample (K, S_p, F), in float64 F-chunks."""
    X = sub.reshape(-1, sub.shape[-1])
    G = np.zeros((len(X), len(X)))
    step = max(1, _CHUNK // max(len(X), 1))
    for f0 in range(0, X.shape[1], step):
        blk = X[:, f0 : f0 + step].astype(np.float64)
        G += blk @ blk.T
    return G


def layer_summary(read_block: BlockReader, layer: int, plan: Plan, norms: Norms) -> LayerSummary:
    """Pass 2: everything the driver needs from one layer, reading it in unit blocks.

    Holds at most two (K, plan.block, F) blocks; reads block pairs (I, J >= I), so a layer is read
    (nb + 1) / 2 times for nb blocks (once when it fits the budget whole).
    """
    K, S, F = plan.K, plan.S, plan.F
    bal = not norms.c_constant  # constant c: the balanced pieces are the layer's divided by c
    scopes = ("overall", "layer", "balanced") if bal else ("overall", "layer")
    A = {sc: np.zeros((S, S)) for sc in scopes}
    Wl = {sc: np.zeros((S, S)) for sc in scopes}
    U, sum_x, sum_x2 = np.zeros((K, K)), np.zeros((K, F)), np.zeros((K, F))
    units = np.asarray(plan.perm_units, dtype=np.int64)
    sub = np.empty((K, len(units), F), dtype=np.float32) if plan.n_perm else None
    blocks = plan.blocks()

    def load(j):
        s0, s1 = blocks[j]
        x = _read(read_block, plan, s0, s1)
        r = _weights(_sq_norms(x), norms, s0, s1, layer, plan.per_layer, bal)
        return x, r, {sc: _summed(x, r[sc]) for sc in scopes}

    for i, (s0, s1) in enumerate(blocks):
        xi, ri, Yi = load(i)
        sx, sx2 = metrics.neuron_sums(xi, norms.nu[:, s0:s1])  # the key-neuron formula's one home
        sum_x += sx
        sum_x2 += sx2
        U += _same_unit(xi, ri["overall"])
        if sub is not None:
            pick = (units >= s0) & (units < s1)
            sub[:, pick] = xi[:, units[pick] - s0]
        for j in range(i, len(blocks)):
            xj, rj, Yj = (xi, ri, Yi) if j == i else load(j)
            _add_pair(A, Wl, xi, xj, ri, rj, Yi, Yj, slice(s0, s1), slice(*blocks[j]))
            del xj, rj, Yj
    if bal:
        A_bal, Wl_bal = A.pop("balanced"), Wl.pop("balanced")
    else:
        c0 = float(norms.c[0, 0])
        A_bal, Wl_bal = A["layer"] / c0, Wl["layer"] / c0
    gram = _sub_gram(sub) if sub is not None else None
    stats = None
    if plan.per_layer:
        cos = sub_cosine(gram, plan.K, plan.S_p, f"layer {layer}") if gram is not None else None
        stats = scope_stats(A["layer"], Wl["layer"], plan, cos)
    return LayerSummary(layer, A["overall"], Wl["overall"], A_bal, Wl_bal, U, sum_x, sum_x2, stats, gram)
