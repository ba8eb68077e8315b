"""The activation store: a Zarr v3 group. With store_masks.py (its per-neuron arrays), the only
module that knows Zarr.

Layout (docs/store.md):
    activations[_last|_pos_frac|_act_pos_frac]  float32 (checkpoint, language, unit, layer, neuron)
        chunk (1, 1, B, 1, F)  — a reducer reads one layer of one block cheaply
        shard (1, 1, B, L, F)  — one work unit (checkpoint, language, unit block) owns whole shards,
                                 because two writers touching one shard lose data
    n_tokens   int32 (checkpoint, language, unit)   own tokens averaged over; chunk (1, 1, B)
    cell_crc32 int64 (checkpoint, language, unit)   completion marker: crc32 of the cell's data,
                                                    written after it; -1 = not done
    checkpoint, checkpoint_revision, checkpoint_step, language, unit, layer: coordinates
    text       str (language, unit)                 the exact input of every cell
    attrs["lingua_ray"]: the manifest (format, identity, fingerprints, resolved config)
    key_score, key_z, key_mask (checkpoint, language, layer, neuron)   the reducer's z-score key neurons
    mask_<criterion> bool (checkpoint, language, layer, neuron)        every reduce.criteria mask, its settings
                                                                       and per-checkpoint info in attrs

Only the driver creates or grows the store and edits the manifest; recorder
actors only write whole blocks through ``write_block``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import numpy as np
import zarr

from lingua_ray.config import StoreConfig  # noqa: F401  (re-exported: the store's config slice)
from lingua_ray.store_masks import NeuronMasks
from lingua_ray.store_spec import (CHECKPOINT_COORDS, DIMS, FORMAT_VERSION, CheckpointInfo, GridSpec,  # noqa: F401
                                   StoreError, cell_checksum, stat_array, text_fingerprint)


def _difference(old, new, path: str) -> str:
    """The first leaf where two JSON-like values differ, both sides in full: 'key.sub: a → b'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k, "<absent>") != new.get(k, "<absent>"):
                return _difference(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}")
    return f"{path}: {json.dumps(old, default=str)} in the store, {json.dumps(new, default=str)} in this run"


def _f32(a: np.ndarray) -> np.ndarray:
    """Statistics as float32 whatever their storage dtype (no copy when already float32)."""
    return a.astype(np.float32, copy=False)


class ActivationStore(NeuronMasks):
    """Open an existing store (``mode="r"`` or ``"r+"``)."""

    def __init__(self, path: str, mode: str = "r"):
        self.path = path
        try:
            # Never trust consolidated metadata when working: it is a snapshot for readers (xarray), and
            # a grown store's arrays have moved on since the last consolidate().
            self.group = zarr.open_group(path, mode=mode, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"no activation store at {path!r}") from e
        if "lingua_ray" not in self.group.attrs:
            raise StoreError(f"{path!r} is a Zarr group but not a lingua_ray store (no manifest)")
        self._index_cache: dict | None = None

    # ---- creation and growth (driver only) ----

    @classmethod
    def create_or_extend(cls, path: str, spec: GridSpec, unit_block: int = 16,
                         dtype: str = "float32") -> "ActivationStore":
        """Create the store, or check an existing one matches ``spec`` and grow it.

        Existing checkpoints/languages must match exactly (fingerprints); new ones are
        appended along their axis. Finished data is never rewritten. ``dtype``: storage dtype
        of the statistics ("float32" or "float16"); an existing store must have it.
        """
        dtype = getattr(dtype, "value", dtype)
        try:
            existing = zarr.open_group(path, mode="r", use_consolidated=False)
            has = "lingua_ray" in existing.attrs
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            has = False
        if not has:
            return cls._create(path, spec, unit_block, dtype)
        store = cls(path, mode="r+")
        if store.dtype != dtype:
            raise StoreError(f"store {path!r} stores its statistics as {store.dtype}, this run asks for "
                             f"store.dtype={dtype}: keep store.dtype={store.dtype}, or use a new store path "
                             "(nothing was changed)")
        store._check_and_grow(spec)
        return store

    @classmethod
    def _create(cls, path: str, spec: GridSpec, B: int, stat_dtype: str = "float32") -> "ActivationStore":
        C, K, S, L, F = len(spec.checkpoints), len(spec.languages), len(spec.unit_ids), spec.n_layers, spec.n_neurons
        g = zarr.open_group(path, mode="w-")
        for stat in spec.statistics:
            g.create_array(stat_array(stat), shape=(C, K, S, L, F), chunks=(1, 1, B, 1, F),
                           shards=(1, 1, B, L, F), dtype=stat_dtype, fill_value=np.nan, dimension_names=DIMS)
        for name, dtype, fill in (("n_tokens", "int32", 0), ("cell_crc32", "int64", -1)):
            g.create_array(name, shape=(C, K, S), chunks=(1, 1, B), dtype=dtype, fill_value=fill,
                           dimension_names=DIMS[:3])
        n_blocks = -(-S // B)
        g.create_array("shard_bytes", shape=(C, K, n_blocks), chunks=(1, 1, n_blocks), dtype="int64", fill_value=-1,
                       dimension_names=("checkpoint", "language", "block"))
        g.create_array("checkpoint", shape=(C,), chunks=(1024,), dtype=str, dimension_names=("checkpoint",))
        g.create_array("checkpoint_revision", shape=(C,), chunks=(1024,), dtype=str, dimension_names=("checkpoint",))
        g.create_array("checkpoint_step", shape=(C,), chunks=(1024,), dtype="int64", fill_value=-1,
                       dimension_names=("checkpoint",))
        g.create_array("language", shape=(K,), chunks=(1024,), dtype=str, dimension_names=("language",))
        g.create_array("text", shape=(K, S), chunks=(1, S), dtype=str, dimension_names=("language", "unit"))
        g.create_array("unit", shape=(S,), dtype=str, dimension_names=("unit",))
        g.create_array("layer", shape=(L,), dtype="int32", dimension_names=("layer",))[:] = np.arange(L)
        g.create_array("neuron", shape=(F,), dtype="int32", dimension_names=("neuron",))[:] = np.arange(F)
        for stat in spec.statistics:  # xarray: select and plot by step / revision
            g[stat_array(stat)].attrs["coordinates"] = CHECKPOINT_COORDS
        g["unit"][:] = np.array(spec.unit_ids, dtype=object).astype(str)
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": stat_dtype,
            "statistics": [getattr(s, "value", s) for s in spec.statistics],
            "arrays": {s: stat_array(s) for s in spec.statistics},
            "unit_block": B,
            "n_layers": L,
            "n_neurons": F,
            "identity": spec.identity,
            "units_sha256": hashlib.sha256("\n".join(spec.unit_ids).encode()).hexdigest(),
            "checkpoints": {},
            "languages": {},
            "config": spec.config,
        }
        g.attrs["lingua_ray"] = manifest
        store = cls(path, mode="r+")
        store._append(spec, spec.checkpoints, spec.languages, c0=0, k0=0)
        return store

    def _check_and_grow(self, spec: GridSpec) -> None:
        m = self.manifest
        where = f"store {self.path!r}"
        for key, want in (("statistics", [getattr(s, "value", s) for s in spec.statistics]), ("n_layers", spec.n_layers),
                          ("n_neurons", spec.n_neurons), ("identity", spec.identity)):
            if m[key] != want:
                raise StoreError(f"{where} was recorded with another {key} ({_difference(m[key], want, key)}). "
                                 "Use a new store path (nothing was changed).")
        units_sha = hashlib.sha256("\n".join(spec.unit_ids).encode()).hexdigest()
        if m["units_sha256"] != units_sha:
            have = list(self.unit_ids)
            diff = next((i for i, (a, b) in enumerate(zip(have, spec.unit_ids)) if a != b), min(len(have), len(spec.unit_ids)))
            raise StoreError(f"{where} holds {len(have)} units; this run's corpus has {len(spec.unit_ids)}; "
                             f"first difference at unit #{diff}. Use a new store path (nothing was changed).")
        for ck in spec.checkpoints:
            old = m["checkpoints"].get(ck["label"])
            if old is not None and old["fingerprint"] != ck["fingerprint"]:
                raise StoreError(f"{where}: checkpoint {ck['label']!r} was recorded from a different model "
                                 f"({_difference(old['fingerprint'], ck['fingerprint'], 'fingerprint')}). "
                                 "Nothing was changed.")
        for lang in spec.languages:
            old = m["languages"].get(lang)
            new = text_fingerprint(spec.unit_ids, spec.texts[lang])
            if old is not None and old != new:
                raise StoreError(f"{where}: language {lang!r} was recorded from different texts "
                                 "(corpus fingerprint differs). Nothing was changed.")
        new_ck = [c for c in spec.checkpoints if c["label"] not in m["checkpoints"]]
        new_lang = [lang for lang in spec.languages if lang not in m["languages"]]
        if new_ck or new_lang:
            self._append(spec, new_ck, new_lang, c0=len(m["checkpoints"]), k0=len(m["languages"]))
        if spec.config:
            m = self.manifest
            m["config"] = spec.config
            self.group.attrs["lingua_ray"] = m

    def _append(self, spec: GridSpec, checkpoints: list[dict], languages: list[str], c0: int, k0: int) -> None:
        g = self.group
        C, K = c0 + len(checkpoints), k0 + len(languages)
        extra = ["shard_bytes"] if "shard_bytes" in g else []  # stores made before it have no size check
        for name in list(self.manifest["arrays"].values()) + ["n_tokens", "cell_crc32"] + extra:
            a = g[name]
            if a.shape[:2] != (C, K):
                a.resize((C, K) + tuple(a.shape[2:]))  # growth only touches metadata
        for name in ("checkpoint", "checkpoint_revision", "checkpoint_step"):
            if g[name].shape[0] != C:
                g[name].resize((C,))
        for name in ("language",):
            if g[name].shape[0] != K:
                g[name].resize((K,))
        if g["text"].shape[0] != K:
            g["text"].resize((K, g["text"].shape[1]))
        m = self.manifest
        for i, ck in enumerate(checkpoints):
            g["checkpoint"][c0 + i] = ck["label"]
            g["checkpoint_revision"][c0 + i] = ck.get("revision") or ""
            g["checkpoint_step"][c0 + i] = -1 if ck.get("step") is None else int(ck["step"])
            m["checkpoints"][ck["label"]] = {"index": c0 + i, "revision": ck.get("revision"),
                                             "step": ck.get("step"), "fingerprint": ck["fingerprint"]}
        for i, lang in enumerate(languages):
            g["language"][k0 + i] = lang
            g["text"][k0 + i, :] = np.array(spec.texts[lang], dtype=object).astype(str)
            m["languages"][lang] = text_fingerprint(spec.unit_ids, spec.texts[lang])
        # The manifest is written last: a crash before this leaves axes the next run re-appends.
        g.attrs["lingua_ray"] = m
        self._index_cache = None

    def consolidate(self) -> None:
        """Write consolidated metadata, so ``xarray.open_zarr(path)`` opens without a warning.

        A snapshot for readers only: lingua_ray itself always opens with use_consolidated=False.
        Called by the stages after they write; a store grown since is re-consolidated by its stage.
        """
        import warnings

        with warnings.catch_warnings():  # zarr notes consolidated metadata is a v3 extension
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(self.group.store)

    # ---- reading ----

    @property
    def manifest(self) -> dict:
        """The raw manifest; only this module reads it — others use the accessors below."""
        return dict(self.group.attrs["lingua_ray"])

    def checkpoint_info(self, label: str) -> CheckpointInfo:
        """Revision, step and fingerprint of one recorded checkpoint."""
        m = self.manifest["checkpoints"]
        if label not in m:
            raise StoreError(f"store {self.path!r} has no checkpoint {label!r}; it has {self.checkpoints}")
        info = m[label]
        return CheckpointInfo(label, info["index"], info.get("revision"), info.get("step"), info["fingerprint"])

    def checkpoint_fingerprints(self) -> dict[str, dict]:
        """label → the fingerprint recorded with it (config sha, weight sha, shape)."""
        return {k: v["fingerprint"] for k, v in self.manifest["checkpoints"].items()}

    def language_fingerprints(self) -> dict[str, str]:
        """language → sha256 of its unit ids and texts."""
        return dict(self.manifest["languages"])

    @property
    def checkpoints(self) -> list[str]:
        m = self.manifest["checkpoints"]
        return sorted(m, key=lambda k: m[k]["index"])

    @property
    def languages(self) -> list[str]:
        return list(self.manifest["languages"])

    @property
    def unit_ids(self) -> np.ndarray:
        return self.group["unit"][:]

    @property
    def statistics(self) -> list[str]:
        return list(self.manifest["statistics"])

    @property
    def dtype(self) -> str:
        """Storage dtype of the statistics ("float32" unless the store was created float16); reads are float32."""
        return self.manifest.get("dtype", "float32")

    @property
    def unit_block(self) -> int:
        """Units per work unit (one shard per statistic, checkpoint and language)."""
        return int(self.manifest["unit_block"])

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        m = self.manifest
        return (len(m["checkpoints"]), len(m["languages"]), len(self.unit_ids), m["n_layers"], m["n_neurons"])

    def _checkpoint_index(self, checkpoint: str) -> int:
        """The checkpoint's position on the checkpoint dimension (unknown labels: StoreError)."""
        return self._index(checkpoint, self.languages[0])[0]

    def _index(self, checkpoint: str, language: str) -> tuple[int, int]:
        if self._index_cache is None:
            m = self.manifest
            self._index_cache = {"c": {k: v["index"] for k, v in m["checkpoints"].items()},
                                 "l": {lang: i for i, lang in enumerate(m["languages"])}}
        try:
            return self._index_cache["c"][checkpoint], self._index_cache["l"][language]
        except KeyError as e:
            raise StoreError(f"store {self.path!r} has no checkpoint/language {e.args[0]!r}") from None

    def blocks(self) -> list[tuple[int, int]]:
        B, S = self.manifest["unit_block"], len(self.unit_ids)
        return [(s0, min(s0 + B, S)) for s0 in range(0, S, B)]

    def done(self) -> np.ndarray:
        """bool (C, K, S): cells whose completion marker is written."""
        return self.group["cell_crc32"][:] >= 0

    def missing_blocks(self, verify: bool = False) -> Iterator[tuple[str, str, int, int]]:
        """(checkpoint, language, s0, s1) work units that need recording.

        A block is done only when every cell's completion marker is written AND its shards are
        present with the byte size the writer recorded (a cheap stat per shard, always); with
        ``verify`` also when every cell's data matches its checksum. A partly marked block is
        not done.
        """
        done = self.done()
        sizes = self.group["shard_bytes"][:] if "shard_bytes" in self.group else None
        for ck in self.checkpoints:
            c = self._checkpoint_index(ck)
            for k, lang in enumerate(self.languages):
                for b, (s0, s1) in enumerate(self.blocks()):
                    ok = bool(done[c, k, s0:s1].all())
                    if ok:
                        ok = self._shards_intact(c, k, b, None if sizes is None else int(sizes[c, k, b]))
                    if ok and verify:
                        ok = self.verify_block(ck, lang, s0, s1)
                    if not ok:
                        yield ck, lang, s0, s1

    def shard_files(self, c: int, k: int, b: int) -> list[str]:
        """Store keys of the shards holding block b of (checkpoint index c, language index k)."""
        return [f"{stat_array(s)}/c/{c}/{k}/{b}/0/0" for s in self.statistics]

    def _shard_bytes(self, c: int, k: int, b: int) -> int | None:
        """Total bytes of the block's shards; None when any is missing."""
        from zarr.core.sync import sync

        total = 0
        for key in self.shard_files(c, k, b):
            try:
                total += int(sync(self.group.store.getsize(key)))
            except (FileNotFoundError, KeyError, OSError):
                return None
        return total

    def _shards_intact(self, c: int, k: int, b: int, want: int | None) -> bool:
        got = self._shard_bytes(c, k, b)
        return got is not None and (want is None or want < 0 or got == want)

    def invalidate_block(self, checkpoint: str, language: str, s0: int, s1: int) -> None:
        """Clear a block's completion markers, then delete its shards (driver, before re-recording):
        zarr reads a shard back before rewriting it, so a torn one would break the repair itself."""
        from zarr.core.sync import sync

        c, k = self._index(checkpoint, language)
        self.group["cell_crc32"][c, k, s0:s1] = -1
        for key in self.shard_files(c, k, s0 // self.manifest["unit_block"]):
            sync(self.group.store.delete(key))

    def read_layer(self, checkpoint: str, layer: int, stat: str = "mean") -> np.ndarray:
        """float32 (K, S, F): one layer of one checkpoint — one chunk per block and language."""
        c = self._checkpoint_index(checkpoint)
        try:
            return _f32(self.group[stat_array(stat)][c, :, :, layer, :])
        except Exception as e:  # noqa: BLE001 - name the damaged cell and file, not zarr's internals
            raise self._locate_damage(checkpoint, c, layer, stat, e) from e

    def _locate_damage(self, checkpoint: str, c: int, layer: int, stat: str, err: Exception) -> StoreError:
        arr = self.group[stat_array(stat)]
        for k, lang in enumerate(self.languages):
            for b, (s0, s1) in enumerate(self.blocks()):
                try:
                    arr[c, k, s0:s1, layer, :]
                except Exception:  # noqa: BLE001
                    return StoreError(
                        f"damaged data in store {self.path!r}: checkpoint={checkpoint} language={lang} units "
                        f"{self.unit_ids[s0]}..{self.unit_ids[s1 - 1]} layer={layer}, file "
                        f"{self.shard_files(c, k, b)[self.statistics.index(getattr(stat, 'value', stat))]} "
                        f"({type(err).__name__}: {err}). Repair: re-run the record stage with "
                        "store.verify_on_resume=true (only damaged blocks are re-recorded)")
        return StoreError(f"store {self.path!r}: reading checkpoint={checkpoint} layer={layer} failed: {err}")

    def read_layer_block(self, checkpoint: str, layer: int, s0: int, s1: int, stat: str = "mean") -> np.ndarray:
        """float32 (K, s1 - s0, F): units s0:s1 of one layer of one checkpoint."""
        c = self._checkpoint_index(checkpoint)
        try:
            return _f32(self.group[stat_array(stat)][c, :, s0:s1, layer, :])
        except Exception as e:  # noqa: BLE001 - name the damaged cell and file, not zarr's internals
            raise self._locate_damage(checkpoint, c, layer, stat, e) from e

    def n_tokens(self, checkpoint: str) -> np.ndarray:
        """int32 (K, S): own tokens each cell averaged over."""
        return self.group["n_tokens"][self._checkpoint_index(checkpoint)]

    def read_cells(self, checkpoint: str, language: str, s0: int, s1: int, stat: str = "mean") -> np.ndarray:
        """float32 (s1 - s0, L, F)."""
        c, k = self._index(checkpoint, language)
        return _f32(self.group[stat_array(stat)][c, k, s0:s1])

    def texts(self, language: str) -> list[str]:
        return list(self.group["text"][self._index(self.checkpoints[0], language)[1]])

    def verify_block(self, checkpoint: str, language: str, s0: int, s1: int) -> bool:
        """True when every cell of the block reads back and matches its checksum (never raises on
        damaged data: a shard that fails to decode is simply not verified)."""
        c, k = self._index(checkpoint, language)
        try:
            data = [self.group[stat_array(s)][c, k, s0:s1] for s in self.statistics]
        except Exception:  # noqa: BLE001 - zarr raises ValueError/OSError/codec errors on torn shards
            return False
        want = self.group["cell_crc32"][c, k, s0:s1]
        return all(cell_checksum([d[i] for d in data]) == want[i] for i in range(s1 - s0))

    # ---- writing (actors) ----

    def write_block(self, checkpoint: str, language: str, s0: int, stats: dict[str, np.ndarray],
                    n_tokens: np.ndarray) -> None:
        """Write one work unit: data first, then token counts, then the completion markers.

        stats[name]: float32 (n, L, F) for every recorded statistic; n = s1 - s0 must be a whole
        block, so this writer owns the shards it touches. Idempotent: rewriting gives the same bytes.
        """
        c, k = self._index(checkpoint, language)
        # The manifest lives in the group's attributes: read it once per block, not once per cell.
        manifest = self.manifest
        B, S = manifest["unit_block"], len(self.unit_ids)
        names, dtype = list(manifest["statistics"]), manifest.get("dtype", "float32")
        n = len(n_tokens)
        if s0 % B or (s0 + n != min(s0 + B, S)):
            raise StoreError(f"write of units [{s0}, {s0 + n}) is not one whole block of {B} (shard safety)")
        if set(stats) != set(names):
            raise StoreError(f"block {checkpoint}/{language}/{s0}: got statistics {sorted(stats)}, "
                             f"store has {names}")
        stored = {}
        for name in names:
            a = stats[name]
            if not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise StoreError(f"non-finite {name} at checkpoint={checkpoint} language={language} "
                                 f"unit={self.unit_ids[s0 + bad[0]]} layer={bad[1]}: refusing to store it")
            with np.errstate(over="ignore"):
                stored[name] = a.astype(dtype, copy=False)  # the checksum covers what is stored
            if not np.isfinite(stored[name]).all():
                bad = np.argwhere(~np.isfinite(stored[name]))[0]
                raise StoreError(f"{name} at checkpoint={checkpoint} language={language} "
                                 f"unit={self.unit_ids[s0 + bad[0]]} layer={bad[1]} exceeds {dtype}'s range "
                                 f"(|value| {float(np.abs(a).max()):.3g}): record this model with store.dtype=float32")
        for name in names:
            self.group[stat_array(name)][c, k, s0:s0 + n] = stored[name]
        self.group["n_tokens"][c, k, s0:s0 + n] = n_tokens.astype(np.int32)
        if "shard_bytes" in self.group:
            self.group["shard_bytes"][c, k, s0 // B] = self._shard_bytes(c, k, s0 // B)
        crcs = np.array([cell_checksum([stored[s][i] for s in names]) for i in range(n)], dtype=np.int64)
        self.group["cell_crc32"][c, k, s0:s0 + n] = crcs

    # ---- reducer outputs (driver only) ----

    def read_layer_features(self, checkpoint: str, layer: int, f0: int, f1: int, stat: str = "mean") -> np.ndarray:
        """float32 (K, S, f1 - f0): neurons f0:f1 of one layer, all units (decoded one chunk at a time)."""
        c = self._checkpoint_index(checkpoint)
        try:
            return _f32(self.group[stat_array(stat)][c, :, :, layer, f0:f1])
        except Exception as e:  # noqa: BLE001 - name the damaged cell and file, not zarr's internals
            raise self._locate_damage(checkpoint, c, layer, stat, e) from e
