"""Ablation throughput: head-only NLL (lingua_ray.perplexity) vs the full-logits head it replaced.

    python bench/bench_ablation.py [--languages en,zh,ar] [--rounds 3] [--device cpu] [--units 16]

The offline default model (Gemma-3-270M, float32 on CPU) on the default run's held-out UDHR units
(16 per language), one evaluation per language exactly as the ablate stage runs them
(``evaluate_mask`` with one language's texts, ablation token budget 4,096), under a random mask
of 1% of each layer's neurons. Side by side in one process, round-robin, ``--rounds`` rounds, medians:

* before: the previous ``_batch_nll``, verbatim: ``model(...).logits`` over the whole padded batch
  (a B × T × 262,144 tensor), then a float32 log-softmax row by row;
* after: ``lingua_ray.perplexity.unit_nll``: decoder body, hidden states of predicted positions
  only, LM head in chunks of ``LOGIT_CHUNK`` logits.

Prints tokens/s (own tokens of the texts), the ratio, useful GFLOP/s (body over real tokens + head
at predicted positions) as a share of the fp32 matmul rate measured in the same run (before, between
and after the ways), and the max relative difference of the perplexities. Every figure twice: in wall-clock time, and in
this process's CPU time (``time.process_time``), which on a shared, oversubscribed machine measures
the work done rather than the share of the cores the process was given (with more than one torch
thread it also counts threads spinning at barriers, so use ``--threads 1`` for the clean figure).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from benchlib import CLOCKS, body_flops, env_line, head_flops, matmul_rate, real_model, udhr_texts
from lingua_ray.ablation import deactivate, expected_mask_shape
from lingua_ray.batching import batches, pad_id_of
from lingua_ray.perplexity import LOGIT_CHUNK, perplexity, unit_nll


@torch.no_grad()
def full_logits_nll(model, tokenizer, texts, token_budget=4096, max_tokens=512):
    """The replaced implementation (perplexity._batch_nll before issue 11), for comparison."""
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)
    nll_sum, n_pred = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
    device = next(model.parameters()).device
    for batch in batches(enc["input_ids"], token_budget, pad_id_of(tokenizer)):
        if batch.width < 2:
            continue
        input_ids = batch.input_ids.to(device)
        logits = model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device), use_cache=False).logits
        for r, m in enumerate(batch.lengths):
            if m < 2:
                continue
            logp = torch.log_softmax(logits[r, : m - 1].float(), dim=-1)
            nll = -logp.gather(-1, input_ids[r, 1:m, None]).squeeze(-1)
            nll_sum[batch.index[r]], n_pred[batch.index[r]] = nll.double().sum().item(), m - 1
    return nll_sum, n_pred


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--languages", default="en,zh,ar")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--units", type=int, default=16, help="held-out units per language (the default run uses 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    languages = a.languages.split(",")
    model, tok = real_model(a.device)
    texts = {lang: t[: a.units] for lang, t in udhr_texts(languages, heldout=True).items()}
    mask = np.random.default_rng(0).random(expected_mask_shape(model)) < 0.01
    lengths = {lang: [len(x) for x in tok(t, add_special_tokens=True, truncation=True, max_length=512)["input_ids"]]
               for lang, t in texts.items()}
    n_tok = sum(sum(v) for v in lengths.values())
    n_pred = sum(sum(m - 1 for m in v) for v in lengths.values())
    flops = sum(body_flops(model, v) for v in lengths.values()) + head_flops(model, n_pred)
    print(env_line(a.device))
    print(f"Gemma-3-270M {next(model.parameters()).dtype}, held-out UDHR {languages} x {a.units} units: "
          f"{n_tok} tokens, {n_pred} predicted; {flops / n_tok / 1e6:.0f} MFLOP/token useful "
          f"(body {sum(body_flops(model, v) for v in lengths.values()) / n_tok / 1e6:.0f}, head at predicted "
          f"positions {head_flops(model, n_pred) / n_tok / 1e6:.0f}); LOGIT_CHUNK {LOGIT_CHUNK}", flush=True)

    ppl: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    fns = {"before": full_logits_nll, "after": unit_nll}
    with deactivate(model, mask):
        unit_nll(model, tok, texts[languages[0]][:2])  # warm-up (and the one-time head check)
        full_logits_nll(model, tok, texts[languages[0]][:2])
        rates = [matmul_rate(device=a.device, clock=clock) for clock in CLOCKS]
        times: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CLOCKS} for k in fns}
        for _ in range(a.rounds):
            for name, fn in fns.items():
                t0 = {c: f() for c, f in CLOCKS.items()}
                for lang in languages:  # one evaluation unit per language, as the ablate stage
                    ppl[name][lang] = perplexity(*fn(model, tok, texts[lang]))
                for c, f in CLOCKS.items():
                    times[name][c].append(f() - t0[c])
            rates += [matmul_rate(device=a.device, clock=clock) for clock in CLOCKS]
    for i, clock in enumerate(CLOCKS):
        rate = statistics.median(rates[i::len(CLOCKS)])
        print(f"[{clock} time] fp32 matmul rate (2048^3, median of {len(rates) // len(CLOCKS)} between rounds): "
              f"{rate / 1e9:.1f} GFLOP/s (range {min(rates[i::len(CLOCKS)]) / 1e9:.1f}-{max(rates[i::len(CLOCKS)]) / 1e9:.1f})")
        med = {k: statistics.median(v[clock]) for k, v in times.items()}
        for name in fns:
            print(f"  {name:6s}: {n_tok / med[name]:7.1f} tokens/s  {med[name]:6.2f} s per {len(languages)} evaluations "
                  f"(rounds {', '.join(f'{t:.2f}' for t in times[name][clock])})  useful "
                  f"{flops / med[name] / 1e9:5.1f} GFLOP/s = {flops / med[name] / rate:.0%} of the matmul rate")
        print(f"  after / before speed: {med['before'] / med['after']:.2f}x")
    rel = max(abs(ppl["after"][k] / ppl["before"][k] - 1) for k in languages)
    print(f"max relative perplexity difference after vs before: {rel:.1e}")


if __name__ == "__main__":
    main()
