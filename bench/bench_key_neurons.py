"""Key-neuron scores: closed form (lingua_ray.metrics) vs the authors' pairwise loop, side by side.

    python bench/bench_key_neurons.py [--quick]

Both score one language on the same random float32 activations a (S, width), starting from the raw
activations (each normalises the unit vectors itself), and must agree (allclose) in the same run.
The loop is the release's ``find_max_average_neurons`` inner loop: a running mean over pairs s < s'
of x[s] * x[s'], elementwise in numpy. Two deliberate departures, both so the outputs are
comparable: no epsilon after normalisation, and no final division by the pair count (the release
divides the running mean by it once more, a constant factor). Time is wall clock without tracing:
the loop is run once (it is long, and steady after its first pairs); the closed form is run
``REPEATS`` times and the best is used for the ratio (the pipeline calls it once per layer, warm),
with its first, cold run printed beside it. Peak memory is a separate tracemalloc run (numpy reports its buffers to tracemalloc). The loop's
allocations are the same for every pair, so its memory run stops after the first ``MEM_ROWS`` rows
of pairs: the peak is reached in the first pair.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lingua_ray.metrics import key_neuron_scores, neuron_sums  # noqa: E402

MEM_ROWS = 3
REPEATS = 3


def closed_form(a: np.ndarray) -> np.ndarray:
    """score (width,) for one language: norms, then sum_x, sum_x2, then the formula. O(S·width)."""
    S = a.shape[0]
    # In the pipeline the norms come from the Grams; here from a, in float64 blocks as neuron_sums does.
    step = max(1, (1 << 17) // S)
    buf = np.empty((S, step))
    norms = np.zeros(S)
    for f0 in range(0, a.shape[1], step):
        blk = buf[:, : min(step, a.shape[1] - f0)]
        np.copyto(blk, a[:, f0 : f0 + step])
        norms += np.einsum("sf,sf->s", blk, blk)
    norms = np.sqrt(norms)
    sum_x, sum_x2 = neuron_sums(a[None], norms[None])
    return key_neuron_scores(sum_x, sum_x2, S)[0]


def pairwise_loop(a: np.ndarray, rows: int | None = None) -> np.ndarray:
    """The release's loop: O(S^2·width). ``rows`` stops it early (memory run only)."""
    hs = a / np.linalg.norm(a, axis=1, keepdims=True)
    sum_hs = np.zeros(hs.shape[1])
    counter = 0
    for i in range(hs.shape[0] if rows is None else rows):
        for j in range(i + 1, hs.shape[0]):
            sum_hs += (hs[i] * hs[j] - sum_hs) / (counter + 1)
            counter += 1
    return sum_hs


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def peak_mib(fn, *args) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def case(label: str, S: int, width: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    # post-GELU-like activations: mostly small, non-negative, a few large
    a = (np.abs(rng.standard_normal((S, width), dtype=np.float32)) ** 2).astype(np.float32)
    print(f"\n[{label}] S = {S} units, width = {width:,} neurons, input {a.nbytes / 2**20:.0f} MiB float32")
    fast, t_cold = timed(closed_form, a)
    t_fast = min([t_cold] + [timed(closed_form, a)[1] for _ in range(REPEATS - 1)])
    slow, t_slow = timed(pairwise_loop, a)
    ok = np.allclose(fast, slow, rtol=1e-5, atol=1e-12)
    rel = np.max(np.abs(fast - slow)) / np.max(np.abs(fast))
    m_fast = peak_mib(closed_form, a)
    m_slow = peak_mib(pairwise_loop, a, MEM_ROWS)
    print(f"  closed form   : {t_fast:9.3f} s   peak {m_fast:8.1f} MiB   (best of {REPEATS}; first run {t_cold:.3f} s)")
    print(f"  pairwise loop : {t_slow:9.3f} s   peak {m_slow:8.1f} MiB   ({S * (S - 1) // 2:,} pairs, one run)")
    print(f"  speed-up      : {t_slow / t_fast:9.1f} x   (vs first run {t_slow / t_cold:.1f} x)"
          f"   memory ratio (loop / closed) {m_slow / m_fast:.2f}")
    print(f"  agree (allclose rtol=1e-5): {ok}   max |diff| / max |score| = {rel:.2e}")
    if not ok:
        raise SystemExit("closed form and pairwise loop disagree")
    return t_slow / t_fast


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds (a smoke run, not the record)")
    args = ap.parse_args()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}"
          f"  numpy {np.__version__}  cpu {cpu_name()} x{os.cpu_count()}")
    if args.quick:
        cases = [("a, quick", 20, 30 * 512, 0.0), ("b, quick", 100, 2048, 0.0)]
    else:
        cases = [
            ("a: BLOOM-7B1, all layers, one language", 100, 30 * 16_384, 40.0),
            ("b: one layer of BLOOM-7B1, 1,000 units", 1_000, 16_384, 400.0),
        ]
    closed_form(np.ones((3, 8), dtype=np.float32))  # warm-up: first-call imports and BLAS start-up
    for label, S, width, target in cases:
        ratio = case(label, S, width)
        if target:
            print(f"  target >= {target:.0f} x: {'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
