"""The store's per-neuron arrays, (checkpoint, language, layer, neuron): the reduce stage's z-score
key neurons (key_score, key_z, key_mask) and every criterion's mask (mask_<name>, docs/criteria.md).

A mixin of ``lingua_ray.store.ActivationStore`` (it uses the store's group, shape and indices);
apart only to keep store.py's recording and reading readable.
"""

from __future__ import annotations

import json

import numpy as np

from lingua_ray.store_spec import CHECKPOINT_COORDS, NEURON_DIMS, StoreError


class NeuronMasks:
    """Per-neuron arrays of an ActivationStore; each (C, K, L, F), chunk (1, 1, 1, F), grown with C."""

    KEY_ARRAYS = {"score": ("key_score", "float32", np.nan), "z": ("key_z", "float32", np.nan),
                  "mask": ("key_mask", "bool", False)}

    def _neuron_array(self, name: str, dtype: str, fill):
        """The (C, K, L, F) array ``name``, created or resized to the store's current C."""
        C, K, _, L, F = self.shape
        if name not in self.group:
            self.group.create_array(name, shape=(C, K, L, F), chunks=(1, 1, 1, F), dtype=dtype,
                                    fill_value=fill, dimension_names=NEURON_DIMS)
            self.group[name].attrs["coordinates"] = CHECKPOINT_COORDS
        a = self.group[name]
        if a.shape != (C, K, L, F):
            a.resize((C, K, L, F))
        return a

    def write_key_neurons(self, checkpoint: str, arrays: dict[str, np.ndarray], settings: dict) -> None:
        """Write key-neuron score / z / mask, each (K, L, F), for one checkpoint.

        Stored as key_score, key_z, key_mask with dimensions (checkpoint, language, layer, neuron);
        ``settings`` (tau, mode, statistic) go into each array's attributes.
        """
        _, K, _, L, F = self.shape
        c = self._checkpoint_index(checkpoint)
        for name, value in arrays.items():
            arr_name, dtype, fill = self.KEY_ARRAYS[name]
            if value.shape != (K, L, F):
                raise StoreError(f"key-neuron {name} for {checkpoint!r} has shape {value.shape}, want {(K, L, F)}")
            a = self._neuron_array(arr_name, dtype, fill)
            a[c] = value.astype(dtype)
            a.attrs["settings"] = settings

    def read_key_mask(self, checkpoint: str) -> np.ndarray:
        """bool (K, L, F) key-neuron mask of one checkpoint (written by the reduce stage)."""
        if "key_mask" not in self.group:
            raise StoreError(f"store {self.path!r} has no key_mask: run the reduce stage first")
        return self.group["key_mask"][self._checkpoint_index(checkpoint)]

    def write_criterion_mask(self, checkpoint: str, name: str, mask: np.ndarray, settings: dict,
                             info: dict | None = None) -> None:
        """Write criterion ``name``'s bool (K, L, F) mask of one checkpoint as ``mask_<name>``
        (dims checkpoint, language, layer, neuron) beside key_mask; ``settings`` go into its attrs
        (those of the run that wrote it), ``info`` (thresholds, λ) into attrs["info"][checkpoint]."""
        _, K, _, L, F = self.shape
        if np.shape(mask) != (K, L, F) or np.asarray(mask).dtype != np.bool_:
            raise StoreError(f"criterion {name!r} mask for {checkpoint!r} must be bool {(K, L, F)}, "
                             f"got {np.asarray(mask).dtype} {np.shape(mask)}")
        c = self._checkpoint_index(checkpoint)
        a = self._neuron_array(f"mask_{name}", "bool", False)
        a[c] = mask
        infos = dict(a.attrs.get("info", {}))
        infos[checkpoint] = json.loads(json.dumps(info or {}, default=float))
        a.attrs.update({"settings": settings, "criterion": name, "info": infos})

    def criterion_settings(self, name: str) -> dict | None:
        """The settings ``mask_<name>`` was written with, or None when the store has no such mask."""
        arr_name = f"mask_{name}"
        return dict(self.group[arr_name].attrs["settings"]) if arr_name in self.group else None

    def read_criterion_mask(self, checkpoint: str, name: str) -> np.ndarray:
        """bool (K, L, F) mask of criterion ``name`` for one checkpoint (reduce stage)."""
        if f"mask_{name}" not in self.group:
            raise StoreError(f"store {self.path!r} has no mask_{name}: add {name} to reduce.criteria and run "
                             "the reduce stage")
        return self.group[f"mask_{name}"][self._checkpoint_index(checkpoint)]
