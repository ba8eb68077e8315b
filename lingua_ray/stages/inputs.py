"""What every stage derives the same way from the config: the store path, the corpus split, and
the identity a store is keyed by. Shared by the stages; calls nothing above it."""

from __future__ import annotations

from pathlib import Path

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
