"""Sufficient statistics built the way the streamed reducer builds them, for metric tests."""

import numpy as np

from lingua_ray import metrics as M


def reduce_stats(a):
    """a (K, S, L, F) -> grams (L, N, N), sum_x, sum_x2 (K, L, F), by the reducer's route."""
    K, S, L, F = a.shape
    grams = np.stack([a[:, :, i, :].reshape(K * S, F) @ a[:, :, i, :].reshape(K * S, F).T for i in range(L)])
    grams = grams.astype(np.float64)
    norms = M.unit_norms(grams, K, S)
    sx = np.empty((K, L, F))
    sx2 = np.empty((K, L, F))
    for i in range(L):
        sx[:, i], sx2[:, i] = M.neuron_sums(a[:, :, i, :], norms)
    return grams, sx, sx2
