"""Capture on an accelerator (or CPU): correctness per adapter, then batched vs one-at-a-time speed.

    python bench/bench_capture.py [--device cuda] [--quick]
    python bench/bench_capture.py --real [--pack-widths 64,128,256] [--rounds 3] [--single] [--threads 1] [--units N]

1. For every tiny adapter config: batched capture equals one-at-a-time (METHOD tolerance) in float32,
   and the bfloat16 difference is printed; an empty deactivation mask reproduces logits exactly.
2. Speed: the same texts through a random-initialised LLaMA-shaped model (default ~0.5B params),
   batched under a token budget vs batch size 1 (the authors' release ran one sentence per call),
   printing tokens/s of each, their ratio, and peak device memory.
3. ``--real``: the offline default model on UDHR units, packed rows vs right padding (``bench_real``).
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


def bench_real(device: str, languages: list[str], rounds: int, widths: list[int], single: bool,
               units: int | None = None) -> None:
    """The offline default: Gemma-3-270M on UDHR units; packed (each width) vs padded, round-robin.

    Ways: packed rows of each ``--pack-widths`` width with the forward stopped after the last
    capture point (the default at PACK_WIDTH), the default width without the stop, and right
    padding without the stop (the layout before issue 11); with ``--single`` also one unit per
    forward (METHOD's tolerance check). Wall-clock and CPU-time tokens/s, the body's useful FLOPs
    as a share of the fp32 matmul rate measured between rounds, and each way's max deviation
    from the padded one.
    """
    import statistics

    sys.path.insert(0, str(Path(__file__).parent))
    from benchlib import CLOCKS, body_flops, env_line, matmul_rate, real_model, spaced, udhr_texts

    from lingua_ray import batching

    model, tok = real_model(device)
    xs = [t for ts in udhr_texts(languages).values() for t in spaced(ts, units)]
    cap = CaptureConfig()  # the defaults the pipeline uses
    default_width = batching.PACK_WIDTH

    def way(width, pack, stop, cfg=cap, one=False):
        def run():
            batching.PACK_WIDTH = width
            try:
                if one:
                    return np.stack([capture_texts(model, tok, [t], cfg, pack=False).stats["mean"][0] for t in xs])
                return capture_texts(model, tok, xs, cfg, pack=pack, stop=stop).stats["mean"]
            finally:
                batching.PACK_WIDTH = default_width
        return run

    ways = {f"packed w={w} + stop" + (" (default)" if w == default_width else ""): way(w, True, True) for w in widths}
    ways[f"packed w={default_width}, no stop"] = way(default_width, True, False)
    ways["padded, no stop (before)"] = way(default_width, False, False)
    if single:
        ways["one unit per forward"] = way(default_width, False, False, one=True)
    lengths = [len(x) for x in tok(xs)["input_ids"]]
    n_own = sum(len(m) - sum(m) for m in tok(xs, return_special_tokens_mask=True)["special_tokens_mask"])
    flops = body_flops(model, lengths)
    print(env_line(device))
    print(f"Gemma-3-270M, UDHR {languages}: {len(xs)} units, {sum(lengths)} tokens ({n_own} own), "
          f"{flops / sum(lengths) / 1e6:.0f} MFLOP/token (body)", flush=True)
    capture_texts(model, tok, xs[:4], cap)  # warm-up
    times = {k: {c: [] for c in CLOCKS} for k in ways}
    rates = {c: [matmul_rate(device=device, clock=c)] for c in CLOCKS}
    got = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            t0 = {c: f() for c, f in CLOCKS.items()}
            got[name] = fn()
            for c, f in CLOCKS.items():
                times[name][c].append(f() - t0[c])
        for c in CLOCKS:
            rates[c].append(matmul_rate(device=device, clock=c))
    ref = got["padded, no stop (before)"]
    scale = np.abs(ref).max(axis=(1, 2))
    for c in CLOCKS:
        rate = statistics.median(rates[c])
        print(f"[{c} time] fp32 matmul rate {rate / 1e9:.1f} GFLOP/s (median of {len(rates[c])})")
        base = statistics.median(times["padded, no stop (before)"][c])
        for name in ways:
            t = statistics.median(times[name][c])
            dev = float((np.abs(got[name] - ref).max(axis=(1, 2)) / scale).max())
            print(f"  {name:32s} {n_own / t:7.0f} tokens/s  x{base / t:4.2f} vs padded  "
                  f"{flops / t / rate:4.0%} of matmul  max rel. dev. {dev:.1e}  rounds "
                  f"{', '.join(f'{x:.1f}' for x in times[name][c])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real", action="store_true", help="only the offline Gemma-3-270M on UDHR comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pack-widths", default="128", help="--real: packed row widths to compare, e.g. 64,128,256")
    ap.add_argument("--single", action="store_true", help="--real: also one unit per forward")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--units", type=int, default=None, help="--real: units per language, evenly spaced (default all)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.real:
        bench_real(a.device, ["en", "zh", "ar"], a.rounds, [int(w) for w in a.pack_widths.split(",")], a.single, a.units)
        return
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    print(f"device {a.device} ({name}), torch {torch.__version__}", flush=True)
    check_adapters(a.device)
    bench_speed(a.device, a.quick)


if __name__ == "__main__":
    main()
