"""The GPU check (run by bench/gpu_check.sh): recorder throughput and MFU in bfloat16 on one GPU.

No network: random-initialised models built on the device from configs, the byte-level tiny
tokenizer (token ids < 260 are valid in every vocabulary), synthetic texts whose lengths follow
the UDHR units' (a log-normal around 40 tokens, a few up to 400). Prints, in this order:

1. the device, versions, and the measured bf16 matmul rate (8192^3), beside the nominal dense
   bf16 peak for known devices (MFU is quoted against both);
2. BLOOM-560m-shaped (24 x 1024, vocab 250,880; ALiBi, so padded batches): the recorder
   (``capture_texts``, token budget from ``worker.device_token_budget``) and the authors' way (one
   text per ``generate(max_new_tokens=1)`` with hooks) side by side, round-robin, tokens/s, ratio,
   MFU; the bf16 capture's max relative deviation from float32 on the same units; the
   perplexity path (``unit_nll``) tokens/s;
3. LLaMA-7B-shaped (32 x 4096, F 11,008, vocab 32,000; packed rows): the recorder's tokens/s and MFU.

Each part has a wall-clock guard so the whole stays under ~8 minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, "bench")
from benchlib import body_flops, env_line, head_flops, matmul_rate, sync  # noqa: E402

from lingua_ray.capture import capture_texts  # noqa: E402
from lingua_ray.config import CaptureConfig  # noqa: E402
from lingua_ray.models.adapters import get_adapter  # noqa: E402
from lingua_ray.models.tiny import tiny_tokenizer  # noqa: E402
from lingua_ray.perplexity import unit_nll  # noqa: E402
from lingua_ray.worker import device_token_budget  # noqa: E402

NOMINAL_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def nominal_peak(name: str) -> float | None:
    return next((v for k, v in NOMINAL_BF16.items() if k in name), None)


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of lowercase words; byte-level token lengths ~ log-normal(median 40), clipped to 8..500."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = int(min(500, max(8, rng.lognormvariate(math.log(40), 0.6))))
        words, size = [], 0
        while size < m:
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
            words.append(w)
            size += len(w) + 1
        out.append(" ".join(words)[: m - 1])
    return out


DEVICE = "cuda"


def build(cfg, dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def timed(fn, device=None):
    device = device or DEVICE
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def authors_way(model, tok, texts) -> None:
    downs = get_adapter(model).down_projections(model)
    sums = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, k=k: sums.__setitem__(k, a[0][0, 1:].float().mean(0)))
             for k, m in enumerate(downs)]
    try:
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]], device=DEVICE)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                           pad_token_id=0)
            torch.stack([sums[k] for k in range(len(downs))]).cpu()  # the host copy the release made per text
    finally:
        for h in hooks:
            h.remove()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def recorder(model, tok, texts, budget):
    return capture_texts(model, tok, texts, CaptureConfig(token_budget=budget, max_tokens=512))


def report(name, tokens, seconds, flops, rate, peak) -> str:
    mfu = flops / seconds
    s = f"{name}: {tokens / seconds:,.0f} tokens/s ({seconds:.2f} s), {mfu / 1e12:.1f} TFLOP/s = {mfu / rate:.0%} of measured"
    return s + (f", {mfu / peak:.0%} MFU of nominal {peak / 1e12:.0f}" if peak else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-texts", type=int, default=8192)
    ap.add_argument("--authors-texts", type=int, default=300)
    ap.add_argument("--big-texts", type=int, default=2048)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script itself")
    a = ap.parse_args()
    global DEVICE
    from transformers import BloomConfig, LlamaConfig

    if a.smoke:
        DEVICE = "cpu"
        a.small_texts, a.authors_texts, a.big_texts = 48, 6, 24
        small_cfg = BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=1000)
        big_cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, vocab_size=1000)
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible to torch", torch.__version__)
            sys.exit(2)
        small_cfg = BloomConfig(hidden_size=1024, n_layer=24, n_head=16, vocab_size=250880)
        big_cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                              max_position_embeddings=4096)
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    peak = nominal_peak(name)
    print(env_line(DEVICE), flush=True)
    rate = matmul_rate(torch.bfloat16, DEVICE, n=512 if a.smoke else None)
    print(f"bf16 matmul rate (8192^3): {rate / 1e12:.0f} TFLOP/s measured; nominal dense peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s ({name})", flush=True)
    tok = tiny_tokenizer()

    # ---- BLOOM-560m-shaped
    small = build(small_cfg, torch.bfloat16)
    budget = device_token_budget(small, 8192)
    texts = synthetic_texts(a.small_texts)
    lengths = [len(x) for x in tok(texts)["input_ids"]]
    flops = body_flops(small, lengths)
    print(f"\n[BLOOM-560m-shaped, bf16] {sum(p.numel() for p in small.parameters()) / 1e9:.2f}B params; "
          f"{len(texts)} texts, {sum(lengths):,} tokens; recorder token budget {budget:,} (sized to memory)", flush=True)
    recorder(small, tok, texts[:64], budget)
    authors_way(small, tok, texts[:4])
    reset_peak()
    rec_t, auth_t = [], []
    n_auth = a.authors_texts
    auth_tokens = sum(lengths[:n_auth])
    for _ in range(2):  # round-robin
        rec_t.append(timed(lambda: recorder(small, tok, texts, budget))[0])
        auth_t.append(timed(lambda: authors_way(small, tok, texts[:n_auth]))[0])
    rec, auth = statistics.median(rec_t), statistics.median(auth_t)
    print(report("  recorder   ", sum(lengths), rec, flops, rate, peak))
    print(report("  authors way", auth_tokens, auth, body_flops(small, lengths[:n_auth]), rate, peak)
          + f"  ({n_auth} texts)")
    print(f"  recorder / authors' way: {(sum(lengths) / rec) / (auth_tokens / auth):.1f}x; peak memory "
          f"{peak_gib():.1f} GiB", flush=True)
    sub = texts[:256]
    bf = recorder(small, tok, sub, budget).stats["mean"]
    small.float()
    fp = recorder(small, tok, sub, budget).stats["mean"]
    dev = float((np.abs(bf - fp).max(axis=(1, 2)) / np.abs(fp).max(axis=(1, 2))).max())
    small.to(torch.bfloat16)
    print(f"  bf16 vs fp32 capture, {len(sub)} units: max relative deviation {dev:.1e}", flush=True)
    ppl_texts = texts[:1024]
    n_pred = sum(m - 1 for m in lengths[:1024])
    unit_nll(small, tok, ppl_texts[:16], token_budget=budget)
    t, _ = timed(lambda: unit_nll(small, tok, ppl_texts, token_budget=budget))
    f_ppl = body_flops(small, lengths[:1024]) + head_flops(small, n_pred)
    print(report("  perplexity (unit_nll, head at predicted positions)", sum(lengths[:1024]), t, f_ppl, rate, peak),
          flush=True)
    del small
    if DEVICE == "cuda":
        torch.cuda.empty_cache()

    # ---- LLaMA-7B-shaped
    if time.perf_counter() - t_start > 300:
        print("\n[LLaMA-7B-shaped] skipped: over 5 minutes already")
        return
    big = build(big_cfg, torch.bfloat16)
    budget = device_token_budget(big, 8192)
    texts = synthetic_texts(a.big_texts, seed=1)
    lengths = [len(x) for x in tok(texts)["input_ids"]]
    print(f"\n[LLaMA-7B-shaped, bf16] {sum(p.numel() for p in big.parameters()) / 1e9:.2f}B params; {len(texts)} texts, "
          f"{sum(lengths):,} tokens; token budget {budget:,}", flush=True)
    recorder(big, tok, texts[:64], budget)
    reset_peak()
    t = statistics.median(timed(lambda: recorder(big, tok, texts, budget))[0] for _ in range(2))
    print(report("  recorder", sum(lengths), t, body_flops(big, lengths), rate, peak)
          + f"; peak memory {peak_gib():.1f} GiB")
    print(f"\ngpu_check done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
