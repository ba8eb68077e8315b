"""Writes the golden fixture and the numbers the pre-redesign code produced on it.

Run once, before the stage redesign, from a checkout of that code:
    python tests/golden/make_golden.py <out_dir>
It writes tiny_llama_m0/, tiny_llama_m1/ (safetensors + tokenizer), corpus.jsonl,
results.json (numeric sections only) and store.npz. tests/test_golden.py runs the
current stages on the same fixture and compares, to 1e-9.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

LANGS = ["en", "fr", "id"]


def build_fixture(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    for seed in (0, 1):
        m = tiny_model("llama", seed=seed)
        m.save_pretrained(root / f"tiny_llama_m{seed}", safe_serialization=True)
        tok.save_pretrained(root / f"tiny_llama_m{seed}")
    rng = random.Random(0)
    words = {lang: [f"{lang}{w}" for w in ("sun", "sea", "tree", "rock", "wind", "fire", "hill", "moon")]
             for lang in LANGS}
    lines = []
    for i in range(14):
        pick = rng.sample(range(8), 4)
        lines.append(json.dumps({"uid": f"u{i:02d}", **{lang: " ".join(words[lang][j] for j in pick)
                                                         for lang in LANGS}}))
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")


NUMERIC_SECTIONS = ("grid", "settings", "checkpoints", "ablation")
STORE_ARRAYS = ("activations", "activations_pos_frac", "n_tokens", "cell_crc32", "key_score", "key_z", "key_mask")


def main(out: Path) -> None:
    from lingua_ray import pipeline
    from lingua_ray.config import (AblationConfig, CaptureConfig, CheckpointConfig, ClusterConfig, CorpusConfig,
                                   ModelConfig, ReduceConfig, RunConfig, RunInfo, SplitConfig, StoreConfig)
    from lingua_ray.store import ActivationStore

    out.mkdir(parents=True, exist_ok=True)
    build_fixture(out)
    work = out / "_run"
    cfg = RunConfig(
        run=RunInfo(name="golden", out_dir=str(work)),
        model=ModelConfig(name="tiny", source="local", hf_id=None, gguf_package=None,
                          checkpoints=[CheckpointConfig(label=f"m{i}", path=str(out / f"tiny_llama_m{i}"), step=i)
                                       for i in (0, 1)]),
        corpus=CorpusConfig(source="jsonl", path=str(out / "corpus.jsonl"), languages=LANGS),
        split=SplitConfig(heldout_units=4, seed=0),
        capture=CaptureConfig(token_budget=256, max_tokens=64, statistics=["mean", "pos_frac"]),
        store=StoreConfig(unit_block=4),
        cluster=ClusterConfig(num_actors=1, cpus_per_actor=1, num_cpus=2),
        reduce=ReduceConfig(tau=1.0, n_boot=50, n_perm=50),
        ablation=AblationConfig(n_random=2),
    )
    pipeline.run(cfg)
    res = json.loads((work / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({k: res[k] for k in NUMERIC_SECTIONS}, indent=1))
    store = ActivationStore(str(work / "activations.zarr"))
    np.savez_compressed(out / "store.npz", **{a: store.group[a][:] for a in STORE_ARRAYS})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
