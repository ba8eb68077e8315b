"""Tiny random-initialised models and a byte-level tokenizer, built in-process (no downloads).

Fixtures for tests, benchmarks and third-party adapter checks (`lingua_ray.models.testing`):
one small config per registered family (`TINY_TYPES`), hidden size 16, 2-3 layers, the same
260-token byte vocabulary, so every family runs the same texts in milliseconds on a CPU.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3

__all__ = ["SPECIALS", "TINY_TYPES", "VOCAB", "tiny_config", "tiny_model", "tiny_tokenizer"]


def tiny_tokenizer(add_eos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 4 specials + 256 bytes (ids 4..259); adds BOS (and EOS if asked)."""
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in sorted(byte_chars):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    single = "<s> $A </s>" if add_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


VOCAB = 4 + 256
_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(model_type: str):
    """A small HF config of family ``model_type`` (a `TINY_TYPES` entry); KeyError otherwise."""
    if model_type == "llama":
        return LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=256, **_COMMON)
    if model_type == "mistral":
        return MistralConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, max_position_embeddings=256, sliding_window=None, **_COMMON)
    if model_type == "qwen2":
        return Qwen2Config(hidden_size=16, intermediate_size=20, num_hidden_layers=3, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=256, **_COMMON)
    if model_type == "gemma3_text":
        return Gemma3TextConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=4,
                                **_COMMON)
    if model_type == "bloom":
        return BloomConfig(hidden_size=16, n_layer=2, n_head=2, **_COMMON)
    if model_type == "gpt2":
        return GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=256, n_inner=40, **_COMMON)
    if model_type == "gpt_neox":
        return GPTNeoXConfig(hidden_size=16, intermediate_size=28, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=256, **_COMMON)
    extra = {
        "qwen3": ("Qwen3Config", dict(head_dim=8)),
        "gemma": ("GemmaConfig", dict(head_dim=8)),
        "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4)),
        "olmo": ("OlmoConfig", {}),
        "olmo2": ("Olmo2Config", {}),
        "phi3": ("Phi3Config", dict(sliding_window=None)),
    }
    if model_type in extra:
        import transformers

        name, kw = extra[model_type]
        return getattr(transformers, name)(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=2,
                                           max_position_embeddings=256, **kw, **_COMMON)
    raise KeyError(model_type)


TINY_TYPES = ["llama", "mistral", "qwen2", "gemma3_text", "bloom", "gpt2", "gpt_neox",
              "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3"]


def tiny_model(model_type: str, seed: int = 0):
    """A seeded random ``*ForCausalLM`` of ``tiny_config(model_type)``, float32, in eval mode."""
    torch.manual_seed(seed)
    cfg = tiny_config(model_type)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random init leaves activations tiny; scale weights up so cross-unit differences are visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()
