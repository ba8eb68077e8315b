"""Capture on an accelerator (or CPU): correctness per adapter, then batched vs one-at-a-time speed.

    python bench/bench_capture.py [--device cuda] [--quick]

1. For every tiny adapter config: batched capture equals one-at-a-time (METHOD tolerance) in float32,
   and the bfloat16 difference is printed; an empty deactivation mask reproduces logits exactly.
2. Speed: the same texts through a random-initialised LLaMA-shaped model (default ~0.5B params),
   batched under a token budget vs batch size 1 (the authors' release ran one sentence per call),
   printing tokens/s of each, their ratio, and peak device memory.
Needs only torch, transformers, numpy and lingua_ray's capture/ablation/hooks modules (no Ray, no Zarr).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lingua_ray.ablation import deactivate, expected_mask_shape
from lingua_ray.capture import capture_texts
from lingua_ray.config import CaptureConfig
from lingua_ray.models.tiny import TINY_TYPES, tiny_model, tiny_tokenizer


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the right to life liberty security person everyone has equal dignity rights free born".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(n)]


def check_adapters(device: str) -> None:
    tok = tiny_tokenizer()
    xs = texts(12, seed=1)
    for mt in TINY_TYPES:
        model = tiny_model(mt).to(device)
        cfg = CaptureConfig(token_budget=1024, max_tokens=200, statistics=["mean", "last", "pos_frac"])
        worst = {}
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            b = capture_texts(model, tok, xs, cfg).stats["mean"]
            s = np.stack([capture_texts(model, tok, [t], cfg).stats["mean"][0] for t in xs])
            worst[str(dtype)] = float((np.abs(b - s).max(axis=(1, 2)) / np.abs(s).max(axis=(1, 2))).max())
        model.to(torch.bfloat16)
        enc = tok(xs[:3], return_tensors="pt", padding=True, truncation=True, max_length=200).to(device)
        with torch.no_grad():
            ref = model(**enc).logits
            with deactivate(model, np.zeros(expected_mask_shape(model), bool)):
                same = torch.equal(model(**enc).logits, ref)
        ok = worst["torch.float32"] <= 1e-4
        print(f"{mt:12s} batched-vs-single rel.max fp32={worst['torch.float32']:.2e} ({'OK' if ok else 'FAIL'}) "
              f"bf16={worst['torch.bfloat16']:.2e}  empty-mask logits identical (bf16): {same}", flush=True)


def bench_speed(device: str, quick: bool) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    if quick:
        cfg = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=1000)
    else:
        cfg = LlamaConfig(hidden_size=1536, intermediate_size=6144, num_hidden_layers=16, num_attention_heads=12,
                          num_key_value_heads=12, vocab_size=32000)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters()) / 1e9
    tok = tiny_tokenizer()
    xs = texts(64 if quick else 512, seed=2)
    cap = CaptureConfig(token_budget=32768, max_tokens=512)
    capture_texts(model, tok, xs[:8], cap)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    got = capture_texts(model, tok, xs, cap)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_batched = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    n_single = len(xs) if quick else 128
    one = CaptureConfig(token_budget=512, max_tokens=512)
    t0 = time.perf_counter()
    for t in xs[:n_single]:
        capture_texts(model, tok, [t], one)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_single = time.perf_counter() - t0
    tok_all = int(got.n_tokens.sum())
    tok_single = int(got.n_tokens[:n_single].sum())
    r_b, r_s = tok_all / t_batched, tok_single / t_single
    print(f"model: llama-shaped {n_params:.2f}B params, {dtype}, L={cfg.num_hidden_layers} F={cfg.intermediate_size}")
    print(f"batched (budget {cap.token_budget} tokens): {r_b:,.0f} tokens/s over {len(xs)} texts; peak {peak:,.0f} MiB")
    print(f"one at a time:                      {r_s:,.0f} tokens/s over {n_single} texts")
    print(f"ratio batched / one-at-a-time: {r_b / r_s:.1f}x")


def bench_real(device: str, languages: list[str]) -> None:
    """The offline default: Gemma-3-270M on UDHR units, batched vs one at a time."""
    from lingua_ray.config import CorpusConfig, ModelConfig
    from lingua_ray.corpus import load_corpus
    from lingua_ray.models.loading import load_checkpoint

    cfg = ModelConfig()
    model, tok = load_checkpoint(cfg, cfg.checkpoints[0], device)
    corpus = load_corpus(CorpusConfig(source="udhr", languages=languages))
    xs = [t for lang in languages for t in corpus.texts(lang)]
    cap = CaptureConfig()  # the defaults the pipeline uses
    capture_texts(model, tok, xs[:4], cap)  # warm-up
    t0 = time.perf_counter()
    got = capture_texts(model, tok, xs, cap)
    t_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = np.stack([capture_texts(model, tok, [t], cap).stats["mean"][0] for t in xs])
    t_s = time.perf_counter() - t0
    n = int(got.n_tokens.sum())
    rel = float((np.abs(got.stats["mean"] - single).max(axis=(1, 2)) / np.abs(single).max(axis=(1, 2))).max())
    print(f"Gemma-3-270M, UDHR {languages}: {len(xs)} units, {n} own tokens, torch threads {torch.get_num_threads()}")
    print(f"batched (budget {cap.token_budget}): {n / t_b:,.0f} tokens/s ({t_b:.1f} s)")
    print(f"one at a time:          {n / t_s:,.0f} tokens/s ({t_s:.1f} s)")
    print(f"ratio batched / one-at-a-time: {t_s / t_b:.2f}x; max relative difference {rel:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real", action="store_true", help="only the offline Gemma-3-270M on UDHR comparison")
    a = ap.parse_args()
    if a.real:
        bench_real(a.device, ["en", "zh", "ar"])
        return
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    print(f"device {a.device} ({name}), torch {torch.__version__}", flush=True)
    check_adapters(a.device)
    bench_speed(a.device, a.quick)


if __name__ == "__main__":
    main()
