"""The recorder's remaining knobs, side by side (issue 11): torch threads, and torch.compile.

    python bench/bench_compile_threads.py [--units 17] [--rounds 3] [--no-compile]
    python bench/bench_compile_threads.py --pinning [--rounds 3]     # OpenMP thread pinning on/off
    python bench/bench_compile_threads.py --profile                  # where the recorder's time goes

Same units and statistic as bench_peers.py (Gemma-3-270M float32, UDHR en/zh/ar, the mean of every
layer's down-projection input), one process, round-robin, medians:
  eager/<n>t      lingua_ray's `capture_texts` (default config) with n torch threads
  compile/<n>t    the same with each decoder layer's hook-free parts (attention, norms, the FFN's
                  activation) compiled by inductor, n threads; first-call compile time reported apart
It prints tokens/s, the ratio to eager at the machine's thread count, the share of the fp32 matmul rate
measured in the same run, and the max deviation from eager. Then the same for the ablation path
(``evaluate_mask``, one evaluation per language of the default run's 8 held-out units under a 1% random
mask, as the ablate stage runs them) eager vs compiled at the machine's thread count, with the max
relative perplexity difference.

--pinning: OpenMP reads its binding once, at start-up, so it cannot change inside one process. This
runs the eager recorder in child processes, alternately unpinned and pinned (OMP_PROC_BIND=close,
OMP_PLACES=cores), ``--rounds`` times each, and prints the medians side by side.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import CLOCKS, body_flops, env_line, matmul_rate, real_model, spaced, udhr_texts  # noqa: E402

from lingua_ray.ablation import evaluate_mask, expected_mask_shape  # noqa: E402
from lingua_ray.capture import capture_texts  # noqa: E402
from lingua_ray.config import CaptureConfig  # noqa: E402
from lingua_ray.models.compiled import compile_hook_free  # noqa: E402


def compiled_copy(model):
    """A deep copy of ``model`` compiled as ``model.compile=true`` compiles it (lingua_ray/models/compiled.py)."""
    m = copy.deepcopy(model)
    compile_hook_free(m)
    return m


def pinning(rounds: int, units: int) -> None:
    """Eager tokens/s at the machine's thread count, unpinned vs pinned, child processes alternating."""
    n_cpu = os.cpu_count() or 1
    envs = {"unpinned": {}, "pinned": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}}
    got: dict[str, list[float]] = {k: [] for k in envs}
    print(env_line("cpu"), flush=True)
    for r in range(rounds):
        for k, extra in envs.items():
            env = {key: v for key, v in os.environ.items() if key not in ("OMP_PROC_BIND", "OMP_PLACES")} | extra
            out = subprocess.run([sys.executable, __file__, "--no-compile", "--rounds", "1", "--units", str(units)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.strip().startswith(f"eager/{n_cpu}t"))
            got[k].append(float(re.split(r"\s+", line.strip())[1]))
            print(f"round {r + 1}/{rounds}: {k} {got[k][-1]:.0f} tokens/s", flush=True)
    for k, v in got.items():
        print(f"  {k:9s} eager/{n_cpu}t median {statistics.median(v):6.0f} tokens/s "
              f"({statistics.median(v) / statistics.median(got['unpinned']):.2f}x unpinned)  rounds {v}")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile(units: int) -> None:
    """One eager recorder pass under torch.profiler: the share of self CPU time in matmul kernels,
    attention and the rest, and the matmul kernels' own FLOP rate against the square-matmul rate."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, tok = real_model("cpu")
    texts = [t for ts in udhr_texts(["en", "zh", "ar"]).values() for t in spaced(ts, units)]
    cfg = CaptureConfig()
    print(env_line("cpu"), flush=True)
    with torch.inference_mode():
        capture_texts(model, tok, texts, cfg)  # warm-up
        rate = matmul_rate(device="cpu")
        with torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            t0 = time.perf_counter()
            capture_texts(model, tok, texts, cfg)
            wall = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = [e for e in events if e.key in MATMUL_OPS]
    mm_time = sum(e.self_cpu_time_total for e in mm)
    mm_flops = sum(e.flops for e in mm)
    attn = sum(e.self_cpu_time_total for e in events if "attention" in e.key or "softmax" in e.key)
    print(f"one pass {wall:.2f}s wall; self CPU time {total / 1e6:.2f}s over all threads' ops")
    print(f"  matmul kernels {', '.join(MATMUL_OPS)}: {mm_time / total:.0%} of self CPU time, "
          f"{mm_flops / 1e9:.0f} GFLOP at {mm_flops / (mm_time / 1e6) / 1e9:.1f} GFLOP/s "
          f"= {mm_flops / (mm_time / 1e6) / rate:.0%} of the square 2048^3 rate ({rate / 1e9:.1f} GFLOP/s)")
    print(f"  attention + softmax: {attn / total:.0%}; everything else: {(total - mm_time - attn) / total:.0%}")
    print("  top ops by self CPU time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"    {e.key:40s} {e.self_cpu_time_total / 1e3:9.1f} ms  {e.self_cpu_time_total / total:5.1%}  "
              f"calls {e.count}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=17, help="units per language, evenly spaced (default 17)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="threads only")
    ap.add_argument("--pinning", action="store_true", help="OpenMP pinning on/off in child processes")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over one recorder pass")
    a = ap.parse_args()
    if a.profile:
        return profile(a.units)
    if a.pinning:
        return pinning(a.rounds, a.units)
    n_cpu = os.cpu_count() or 1
    threads = sorted({1, n_cpu})
    languages = ["en", "zh", "ar"]
    model, tok = real_model("cpu")
    texts = [t for ts in udhr_texts(languages).values() for t in spaced(ts, a.units)]
    lengths = [len(x) for x in tok(texts)["input_ids"]]
    flops = body_flops(model, lengths)
    cfg = CaptureConfig()
    models = {"eager": model}
    print(env_line("cpu"))
    print(f"Gemma-3-270M float32, UDHR {languages}: {len(texts)} units, {sum(lengths)} tokens; "
          f"body {flops / sum(lengths) / 1e6:.0f} MFLOP/token", flush=True)
    if not a.no_compile:
        try:
            t0 = time.perf_counter()
            cm = compiled_copy(model)
            capture_texts(cm, tok, texts, cfg)  # first call: traces and compiles every shape seen
            print(f"compile: first pass over the units (tracing + inductor) {time.perf_counter() - t0:.1f}s")
            models["compile"] = cm
        except Exception as e:  # noqa: BLE001 - a bench reports what failed and goes on
            print(f"compile: failed, skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    ways = {f"{m}/{n}t": (m, n) for m in models for n in threads}
    with torch.inference_mode():
        for m, n in ways.values():  # warm-up: one full pass per way (inductor's code is per thread count)
            torch.set_num_threads(n)
            capture_texts(models[m], tok, texts, cfg)
        got: dict[str, np.ndarray] = {}
        times = {k: {c: [] for c in CLOCKS} for k in ways}
        rates = {c: [] for c in CLOCKS}
        for r in range(a.rounds):
            for name, (m, n) in ways.items():
                torch.set_num_threads(n)
                t0 = {c: f() for c, f in CLOCKS.items()}
                got[name] = capture_texts(models[m], tok, texts, cfg).stats["mean"]
                for c, f in CLOCKS.items():
                    times[name][c].append(f() - t0[c])
            torch.set_num_threads(n_cpu)
            for c in CLOCKS:
                rates[c].append(matmul_rate(device="cpu", clock=c))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {times[k]['wall'][-1]:.1f}s" for k in ways),
                  flush=True)
    base = f"eager/{n_cpu}t"
    ref = got[base]
    scale = np.abs(ref).max(axis=(1, 2))
    dev = {k: float((np.abs(v - ref).max(axis=(1, 2)) / scale).max()) for k, v in got.items()}
    n_tok = sum(lengths)
    for c in CLOCKS:
        rate = statistics.median(rates[c])
        med = {k: statistics.median(v[c]) for k, v in times.items()}
        print(f"\n[{c} time] fp32 matmul rate at {n_cpu} threads {rate / 1e9:.1f} GFLOP/s (median of {len(rates[c])})")
        print(f"  {'way':14s} {'tokens/s':>9s} {'x ' + base:>12s} {'matmul share':>12s} {'max dev':>8s}  rounds (s)")
        for k in ways:
            print(f"  {k:14s} {n_tok / med[k]:9.0f} {med[base] / med[k]:11.2f}x {flops / med[k] / rate:11.0%} "
                  f"{dev[k]:8.1e}  {', '.join(f'{t:.1f}' for t in times[k][c])}")
    if "compile" in models:
        torch.set_num_threads(n_cpu)
        ablation_table(models, tok, languages, a.rounds)


def ablation_table(models: dict, tok, languages: list[str], rounds: int) -> None:
    """evaluate_mask eager vs compiled, round-robin, at the machine's thread count."""
    held = udhr_texts(languages, heldout=True)
    mask = np.random.default_rng(0).random(expected_mask_shape(models["eager"])) < 0.01
    n_tok = sum(len(x) for t in held.values() for x in tok(t)["input_ids"])
    ppl: dict[str, dict[str, float]] = {}

    def run(m):
        return {lang: evaluate_mask(m, tok, mask, {lang: held[lang]}, 4096, 512)[lang] for lang in languages}

    with torch.inference_mode():
        for k, m in models.items():  # warm-up: every shape compiled once
            ppl[k] = run(m)
        times = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                ppl[k] = run(m)
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n[ablation, wall time] {len(languages)} evaluations ({n_tok} tokens) per round, 1% random mask")
    for k in models:
        rel = max(abs(ppl[k][lang] / ppl["eager"][lang] - 1) for lang in languages)
        print(f"  {k:8s} {n_tok / med[k]:8.1f} tokens/s {med['eager'] / med[k]:6.2f}x eager  max rel ppl diff "
              f"{rel:.1e}  rounds (s) {', '.join(f'{t:.1f}' for t in times[k])}")


if __name__ == "__main__":
    main()
