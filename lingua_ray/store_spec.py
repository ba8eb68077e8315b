"""What a store holds, independent of Zarr: the grid a run asks for, fingerprints, checksums,
array names. store.py (with store_masks.py, the only modules that know Zarr) re-exports all of it."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

FORMAT_VERSION = 1


def stat_array(stat: str) -> str:
    """The Zarr array holding one statistic: "activations" for the mean, "activations_<stat>" otherwise."""
    name = getattr(stat, "value", stat)  # a Statistic enum or its string value
    return "activations" if name == "mean" else f"activations_{name}"

DIMS = ("checkpoint", "language", "unit", "layer", "neuron")
NEURON_DIMS = ("checkpoint", "language", "layer", "neuron")  # key-neuron and criterion masks
CHECKPOINT_COORDS = "checkpoint_step checkpoint_revision"  # CF-style: coordinates on the checkpoint dim


class StoreError(ValueError):
    """The store is missing, malformed, or does not match this run."""


@dataclass
class GridSpec:
    """What a run wants in the store. Texts are (K lists of S strings), language-major."""

    checkpoints: list[dict]  # {"label", "revision", "step", "fingerprint"}
    languages: list[str]
    unit_ids: list[str]
    texts: dict[str, list[str]]
    n_layers: int
    n_neurons: int
    statistics: list[str]
    identity: dict  # config parts that change the numbers (model family, capture settings)
    config: dict = field(default_factory=dict)  # the resolved run config, saved for provenance


def text_fingerprint(unit_ids: list[str], texts: list[str]) -> str:
    h = hashlib.sha256()
    for u, t in zip(unit_ids, texts):
        h.update(u.encode() + b"\x00" + t.encode() + b"\x01")
    return h.hexdigest()


def cell_checksum(arrays: list[np.ndarray]) -> int:
    """crc32 over one cell's float32 data across statistics (each (L, F))."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype=np.float32).tobytes(), crc)
    return crc


@dataclass(frozen=True)
class CheckpointInfo:
    label: str
    index: int
    revision: Optional[str]
    step: Optional[int]
    fingerprint: dict


