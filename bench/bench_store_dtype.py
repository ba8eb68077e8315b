"""Compact storage (``store.dtype=float16``): the error it causes, measured on a finished run.

    python bench/bench_store_dtype.py runs/gemma3-270m-udhr [--workdir /tmp/x]

The run folder must hold a finished float32 record (``config.resolved.json``, the store). Its store is
copied cell for cell twice, into a float32 and a float16 store (the float16 copy is exactly what
recording with ``store.dtype=float16`` writes: the recorder computes float32 statistics and the store
rounds them on write). The reduce stage then runs on both copies with the run's own config (same
seeds, same criteria), and the bench prints, side by side:

* overall and layer-balanced LRDS / SADS, and the largest per-layer difference of each;
* per language, the Jaccard overlap of the key-neuron sets (and of every other criterion's sets);
* the largest difference of the alignment metrics (retrieval, MEXA, ILO, CKA) per layer;
* the stores' sizes and the copy (write) throughput of each.

The original store is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lingua_ray.config import to_run_config
from lingua_ray.stages import reduce
from lingua_ray.stages.inputs import store_path
from lingua_ray.store import ActivationStore, GridSpec


def copy_store(src: ActivationStore, path: Path, dtype: str) -> tuple[ActivationStore, float]:
    """A copy of ``src`` stored as ``dtype``; returns it and the seconds its writes took."""
    m = src.manifest
    ckpts = sorted(m["checkpoints"].items(), key=lambda kv: kv[1]["index"])
    spec = GridSpec(
        checkpoints=[{"label": lab, "revision": v["revision"], "step": v["step"], "fingerprint": v["fingerprint"]}
                     for lab, v in ckpts],
        languages=list(src.languages), unit_ids=[str(u) for u in src.unit_ids],
        texts={lang: src.texts(lang) for lang in src.languages}, n_layers=m["n_layers"], n_neurons=m["n_neurons"],
        statistics=list(src.statistics), identity=m["identity"], config=m.get("config", {}))
    dst = ActivationStore.create_or_extend(str(path), spec, src.unit_block, dtype)
    seconds = 0.0
    for ck, lang, s0, s1 in list(dst.missing_blocks()):
        c, k = src._index(ck, lang)
        stats = {s: src.read_cells(ck, lang, s0, s1, s) for s in src.statistics}
        n_tokens = src.group["n_tokens"][c, k, s0:s1]
        t0 = time.perf_counter()
        dst.write_block(ck, lang, s0, stats, n_tokens)
        seconds += time.perf_counter() - t0
    return dst, seconds


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _max_diff(a: list, b: list) -> float:
    return max(abs(x["value"] - y["value"]) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a finished float32 run folder (config.resolved.json + its store)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    run = Path(a.run)
    cfg = to_run_config(json.loads((run / "config.resolved.json").read_text()))
    src = ActivationStore(store_path(cfg))
    if src.dtype != "float32":
        sys.exit(f"{src.path} is stored as {src.dtype}; give a float32 run")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="lr_dtype_"))
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for dtype in ("float32", "float16"):
        path = work / f"{dtype}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        store, secs = copy_store(src, path, dtype)
        size = _du(path)
        c = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(work / f"run_{dtype}")),
                                store=dataclasses.replace(cfg.store, path=str(path), dtype=dtype))
        res = reduce.run(c)
        out[dtype] = (res, ActivationStore(str(path)), size, secs)
        print(f"[{dtype}] store {size / 2**20:.1f} MiB, copy writes {size / 2**20 / secs:.1f} MB/s", flush=True)
    (r32, s32, b32, _), (r16, s16, b16, _) = out["float32"], out["float16"]
    K, L = len(s32.languages), s32.shape[3]
    print(f"\n{run.name}: K={K} S={s32.shape[2]} L={L} F={s32.shape[4]}, checkpoints {s32.checkpoints}; "
          f"float16 store {b16 / b32:.2f}x the float32 one")
    for e32, e16 in zip(r32["checkpoints"], r16["checkpoints"]):
        print(f"checkpoint {e32['label']}:")
        for part in ("overall", "overall_balanced"):
            for m in ("lrds", "sads"):
                x, y = e32[part][m]["value"], e16[part][m]["value"]
                print(f"  {part:16s} {m.upper()}: float32 {x:.6f}  float16 {y:.6f}  |diff| {abs(x - y):.1e}")
        for m in ("lrds", "sads"):
            print(f"  per layer {m.upper()}: max |diff| over {L} layers {_max_diff(e32['per_layer'][m], e16['per_layer'][m]):.1e}")
        names = (r32.get("criteria") or {}).get("names", ["zscore"])
        for name in names:
            m32 = s32.read_criterion_mask(e32["label"], name) if name != "zscore" else s32.read_key_mask(e32["label"])
            m16 = s16.read_criterion_mask(e32["label"], name) if name != "zscore" else s16.read_key_mask(e32["label"])
            jac = [_jaccard(m32[k], m16[k]) for k in range(K)]
            print(f"  {name:18s} sets: {int(m32.sum()):,} vs {int(m16.sum()):,} neurons; Jaccard per language "
                  f"min {min(jac):.4f}, mean {np.mean(jac):.4f}")
    if r32.get("alignment"):
        for a32, a16 in zip(r32["alignment"]["checkpoints"], r16["alignment"]["checkpoints"]):
            layers32, layers16 = a32["per_layer"], a16["per_layer"]  # one dict of metrics per layer
            for metric, v in layers32[0].items():
                if isinstance(v, dict) and "value" in v:
                    d = max(abs(x[metric]["value"] - y[metric]["value"]) for x, y in zip(layers32, layers16))
                    print(f"  alignment {metric:10s} per layer: max |diff| {d:.1e}")


if __name__ == "__main__":
    main()
