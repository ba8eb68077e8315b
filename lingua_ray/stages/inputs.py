"""What every stage derives the same way from the config: the store path, the corpus split, and
the identity a store is keyed by. Shared by the stages; calls nothing above it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lingua_ray.config import RunConfig, resolved
from lingua_ray.corpus import ParallelCorpus, load_corpus


def store_path(cfg: RunConfig) -> str:
    return cfg.store.path or str(Path(cfg.run.out_dir) / "activations.zarr")


def corpora(cfg: RunConfig) -> tuple[ParallelCorpus, ParallelCorpus | None]:
    """(selection, held-out): held-out units never pick neurons; None when the split is off."""
    corpus = load_corpus(cfg.corpus)
    n_out = cfg.split.heldout_units
    if n_out <= 0:
        return corpus, None
    if n_out >= corpus.S - 1:
        raise ValueError(f"split.heldout_units={n_out} leaves too few of the corpus's {corpus.S} units "
                         f"(need ≥ 2 to pick neurons); lower split.heldout_units")
    return corpus.split(corpus.S - n_out, seed=cfg.split.seed)


def resolved_dtype(cfg: RunConfig) -> str:
    """The dtype the recorders run in: "auto" resolved for the device the cluster config asks for."""
    from lingua_ray.models.loading import torch_dtype

    gpu = cfg.cluster.gpus_per_actor > 0
    return str(torch_dtype(cfg.model.dtype, "cuda" if gpu else "cpu")).replace("torch.", "")


def store_identity(cfg: RunConfig) -> dict:
    """Config parts that change the recorded numbers: a store refuses a run that differs in any."""
    m = resolved(cfg)["model"]
    return {
        "model": {"name": m["name"], "source": m["source"], "hf_id": m["hf_id"],
                  "gguf_package": m["gguf_package"], "dtype": resolved_dtype(cfg)},
        "capture": {"max_tokens": cfg.capture.max_tokens},
        "corpus": {"source": cfg.corpus.source, "max_units": cfg.corpus.max_units, "seed": cfg.corpus.seed,
                   "heldout_units": cfg.split.heldout_units, "split_seed": cfg.split.seed},
    }


# Settings that change how the work is cut, not the numbers (beyond float rounding).
NOT_DETERMINING = {"reduce.max_task_bytes"}


def _first_difference(old: Any, new: Any, path: str) -> str | None:
    """``path: <old> in results.json, <new> in this config`` for the first differing leaf, or None."""
    if path in NOT_DETERMINING:
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            d = _first_difference(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}")
            if d:
                return d
        return None
    if old != new:
        return f"{path}: {json.dumps(old, default=str)} in results.json, {json.dumps(new, default=str)} in this config"
    return None


def check_results_current(cfg: RunConfig, results: dict, results_path: Path, store: Any | None) -> None:
    """Refuse a results.json that is not this config's and this store's: what a later stage (the
    report, the ablation) would otherwise present as current. ValueError, one line, naming the
    differing field and the stage to run.

    Checked: the store's checkpoints and texts are the ones results.json was reduced from
    (``run.model_fingerprint``, ``run.corpus_fingerprint``; skipped when ``store`` is None, e.g. a
    results.json copied without its store), and the reduce settings are this config's.
    """
    from lingua_ray.config import fingerprint

    run = results.get("run", {})
    if store is not None:
        if fingerprint(store.checkpoint_fingerprints()) != run.get("model_fingerprint"):
            raise ValueError(f"{results_path} was reduced from other checkpoints than store {store.path!r} now holds "
                             f"(it has {list(store.checkpoints)}); run the reduce stage first")
        if fingerprint(store.language_fingerprints()) != run.get("corpus_fingerprint"):
            raise ValueError(f"{results_path} was reduced from other languages or texts than store {store.path!r} "
                             f"now holds (it has {list(store.languages)}); run the reduce stage first")
    then = (run.get("config") or {}).get("reduce")
    if then is not None:
        diff = _first_difference(then, resolved(cfg)["reduce"], "reduce")
        if diff:
            raise ValueError(f"{results_path} was reduced with other settings ({diff}); run the reduce stage "
                             "first, or go back to the settings it was made with")
