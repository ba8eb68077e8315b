"""Key-neuron scores: closed form (lingua_ray.metrics) vs the authors' pairwise loop, side by side.

    python bench/bench_key_neurons.py [--quick]

Both score one language on the same random float32 activations a (S, width) and must agree
(allclose) in the same run.

* pairwise loop: the release's ``find_max_average_neurons`` inner loop, a running mean over pairs
  s < s' of x[s] * x[s'], elementwise in numpy, O(S^2 width). Two deliberate departures so that the
  outputs are comparable: no epsilon after normalisation, no final division by the pair count (the
  release divides the running mean by it once more, a constant factor).
* closed form: ``neuron_sums`` (x = a / ||v||, sum_x, sum_x2) then ``key_neuron_scores``, O(S width).

Both normalise with the same unit norms ||v[s]||, computed once beforehand: in lingua_ray they come
from the Gram diagonal that LRDS/SADS need anyway, and the loop's own normalisation is O(S width),
noise next to its pairs. The headline ratio (and the target check) is loop / closed form on that
footing. A second line adds the cost of computing the norms from the raw activations to the closed
form, for readers who want that comparison.

Timing is wall clock without tracing. The loop runs once (it is long, steady after its first
pairs); the closed form runs ``REPEATS`` times and the best counts (the pipeline calls it once per
layer, warm), its first, cold run printed beside it. Peak memory is a separate tracemalloc run
(numpy reports its buffers to tracemalloc); the loop allocates the same per pair, so its memory run
stops after the first ``MEM_ROWS`` rows of pairs: the peak is reached at the first pair.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import tracemalloc

import numpy as np

from lingua_ray.metrics import key_neuron_scores, neuron_sums  # the installed package (pip install -e .)

MEM_ROWS = 3
REPEATS = 3


def norms_from_raw(a: np.ndarray) -> np.ndarray:
    """(S,) ||v[s]|| in float64, one cache-sized column block at a time."""
    S = a.shape[0]
    step = max(1, (1 << 17) // S)
    buf = np.empty((S, step))
    sq = np.zeros(S)
    for f0 in range(0, a.shape[1], step):
        blk = buf[:, : min(step, a.shape[1] - f0)]
        np.copyto(blk, a[:, f0 : f0 + step])
        sq += np.einsum("sf,sf->s", blk, blk)
    return np.sqrt(sq)


def closed_form(a: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """score (width,) for one language: sum_x, sum_x2, then the formula. O(S width)."""
    sum_x, sum_x2 = neuron_sums(a[None], norms[None])
    return key_neuron_scores(sum_x, sum_x2, a.shape[0])[0]


def closed_form_from_raw(a: np.ndarray) -> np.ndarray:
    return closed_form(a, norms_from_raw(a))


def pairwise_loop(a: np.ndarray, norms: np.ndarray, rows: int | None = None) -> np.ndarray:
    """The release's loop, O(S^2 width); ``rows`` stops it early (memory run only)."""
    hs = a / norms.astype(a.dtype)[:, None]
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


def best_of(fn, *args):
    out, cold = timed(fn, *args)
    return out, min([cold] + [timed(fn, *args)[1] for _ in range(REPEATS - 1)]), cold


def peak_mib(fn, *args) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def case(label: str, S: int, width: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    # post-GELU-like activations: non-negative, mostly small, a few large
    a = (np.abs(rng.standard_normal((S, width), dtype=np.float32)) ** 2).astype(np.float32)
    print(f"\n[{label}] S = {S} units, width = {width:,} neurons, input {a.nbytes / 2**20:.0f} MiB float32")
    norms = norms_from_raw(a)
    fast, t_fast, t_cold = best_of(closed_form, a, norms)
    fast_raw, t_raw, _ = best_of(closed_form_from_raw, a)
    slow, t_slow = timed(pairwise_loop, a, norms)
    ok = np.allclose(fast, slow, rtol=1e-5, atol=1e-12) and np.array_equal(fast, fast_raw)
    rel = np.max(np.abs(fast - slow)) / np.max(np.abs(fast))
    m_fast = peak_mib(closed_form, a, norms)
    m_raw = peak_mib(closed_form_from_raw, a)
    m_slow = peak_mib(pairwise_loop, a, norms, MEM_ROWS)
    print(f"  closed form           : {t_fast:8.3f} s  peak {m_fast:7.1f} MiB  (best of {REPEATS}; first run {t_cold:.3f} s)")
    print(f"  closed form, + norms  : {t_raw:8.3f} s  peak {m_raw:7.1f} MiB  (norms from the raw activations too)")
    print(f"  pairwise loop         : {t_slow:8.3f} s  peak {m_slow:7.1f} MiB  ({S * (S - 1) // 2:,} pairs, one run)")
    print(f"  speed-up              : {t_slow / t_fast:8.1f} x  (closed form's first run: {t_slow / t_cold:.1f} x;"
          f" with norms: {t_slow / t_raw:.1f} x)")
    print(f"  memory, loop / closed : {m_slow / m_fast:8.1f} x")
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
          f"  numpy {np.__version__}  cpu {cpu_name()} x{os.cpu_count()}  load average {os.getloadavg()[0]:.2f}")
    if args.quick:
        cases = [("a, quick", 20, 30 * 512, 0.0), ("b, quick", 100, 2048, 0.0)]
    else:
        cases = [
            ("a: BLOOM-7B1, 30 layers x 16,384, one language", 100, 30 * 16_384, 40.0),
            ("b: one BLOOM-7B1 layer, 1,000 units", 1_000, 16_384, 400.0),
        ]
    x = np.ones((3, 8), dtype=np.float32)
    closed_form(x, norms_from_raw(x))  # warm-up: first-call imports and BLAS start-up
    for label, S, width, target in cases:
        ratio = case(label, S, width)
        if target:
            print(f"  target >= {target:.0f} x: {'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
