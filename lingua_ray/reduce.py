"""Streamed sufficient statistics over the activation store, one layer at a time.

Two passes per checkpoint, each one task per layer (schedule.py runs them on Ray):

1. ``layer_gram``: G[layer] = A Aᵀ, A (N, F) the layer's activations, N = K·S rows
   language-major. The all-layer unit norms ‖v‖ come from Σ_layer diag(G[layer]).
2. ``layer_neuron_sums``: Σ_s x and Σ_s x² per language and neuron, x = a / ‖v‖
   (metrics.neuron_sums holds the formula).

Peak memory per task is one layer of one checkpoint (K·S·F float32) plus its
(N, N) float64 output — never the whole array — so a store larger than RAM reduces.
"""

from __future__ import annotations

import numpy as np

from lingua_ray import metrics
from lingua_ray.store import ActivationStore, StoreError


def _layer(store: ActivationStore, checkpoint: str, layer: int, stat: str) -> np.ndarray:
    a = store.read_layer(checkpoint, layer, stat)  # (K, S, F) float32
    if not np.isfinite(a).all():
        k, s, _ = np.argwhere(~np.isfinite(a))[0]
        raise StoreError(
            f"checkpoint {checkpoint!r} layer {layer}: cell language={store.languages[k]} "
            f"unit={store.unit_ids[s]} is missing or non-finite; record the grid first"
        )
    return a


def layer_gram(store_path: str, checkpoint: str, layer: int, stat: str = "mean") -> np.ndarray:
    """float64 (N, N) Gram of one layer, rows language-major (l·S + s)."""
    store = ActivationStore(store_path)
    a = _layer(store, checkpoint, layer, stat)
    A = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return A @ A.T


def layer_neuron_sums(store_path: str, checkpoint: str, layer: int, norms: np.ndarray,
                      stat: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(sum_x, sum_x2), each float64 (K, F), for one layer; norms (K, S) from metrics.unit_norms."""
    store = ActivationStore(store_path)
    return metrics.neuron_sums(_layer(store, checkpoint, layer, stat), norms)
