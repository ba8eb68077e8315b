"""Fixtures of a fast tiny pipeline run, shared by the follow and submit tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from lingua_ray.config import (CaptureConfig, CheckpointConfig, ClusterConfig, CorpusConfig, ModelConfig, RunConfig,
                               RunInfo, SplitConfig, StoreConfig)
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer

LANGS = ["en", "fr", "id"]


def save_tiny(folder: Path, seed: int) -> Path:
    """A seeded tiny LLaMA and its byte tokenizer, as save_pretrained writes them."""
    tiny_model("llama", seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_corpus(path: Path, n: int = 14, languages: list[str] | None = None) -> Path:
    """A jsonl corpus of ``n`` aligned units in ``languages`` (default LANGS; 4 units are held out by
    tiny_overrides): unit i is the same 4 of 8 words, seeded, in every language ("ensun ensea ...")."""
    languages = LANGS if languages is None else languages
    rng = random.Random(0)
    words = {lang: [f"{lang}{w}" for w in ("sun", "sea", "tree", "rock", "wind", "fire", "hill", "moon")]
             for lang in languages}
    lines = []
    for i in range(n):
        pick = rng.sample(range(8), 4)
        texts = {lang: " ".join(words[lang][j] for j in pick) for lang in languages}
        lines.append(json.dumps({"uid": f"u{i:02d}", **texts}))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(root: Path, out: Path, checkpoints=("m0",), statistics=("mean",), unit_block: int = 4,
                num_actors: int = 2, **sections) -> RunConfig:
    """The RunConfig of a tiny in-process run over ``root`` (save_tiny's m0, m1, … and write_corpus's
    corpus.jsonl): checkpoint i is ``root/<label>`` at step i, 4 held-out units, budget 256 tokens,
    64 tokens per unit, one CPU per actor. ``sections`` (reduce=, ablation=, …) replace whole slices."""
    return RunConfig(
        run=RunInfo(name="t", out_dir=str(out)),
        model=ModelConfig(name="tiny", source="local", hf_id=str(root / checkpoints[0]), gguf_package=None,
                          checkpoints=[CheckpointConfig(label=c, path=str(root / c), step=i)
                                       for i, c in enumerate(checkpoints)]),
        corpus=CorpusConfig(source="jsonl", path=str(root / "corpus.jsonl"), languages=list(LANGS)),
        split=SplitConfig(heldout_units=4, seed=0),
        capture=CaptureConfig(token_budget=256, max_tokens=64, statistics=list(statistics)),
        store=StoreConfig(unit_block=unit_block),
        cluster=ClusterConfig(num_actors=num_actors, cpus_per_actor=1, num_cpus=2),
        **sections,
    )


def tiny_overrides(corpus: Path) -> list[str]:
    """The pipeline overrides of a fast tiny run (record, reduce, report; no ablation):
    10 selection units x 3 languages = 30 cells per checkpoint."""
    return ["model=tiny-trajectory", "model.name=tiny", "corpus=jsonl", f"corpus.path={corpus}",
            "corpus.languages=[en,fr,id]", "split.heldout_units=4", "capture.max_tokens=64",
            "capture.token_budget=256", "reduce.tau=1.0", "reduce.n_boot=20", "reduce.n_perm=20",
            "ablation.enabled=false", "cluster.cpus_per_actor=1"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under ``folder``: equal snapshots = nothing written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}
