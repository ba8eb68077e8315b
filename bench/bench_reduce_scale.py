"""Reduce at scale: wall time, driver and task peak RSS, and how each grows with S, K, L and C.

    python bench/bench_reduce_scale.py --quick                      # a smoke run, under a minute
    python bench/bench_reduce_scale.py --sweep                      # growth with S, K, L, C (small grids)
    python bench/bench_reduce_scale.py --grid 10,997,30,2048 --checkpoints 1    # one grid K,S,L,F
    python bench/bench_reduce_scale.py --targets                    # the issue's target grids
    python bench/bench_reduce_scale.py --perm-cost --n-perm 200     # ms per permutation, by K and S_p

What runs: the streamed reduce of lingua_ray.reduce, task bodies and combine, not the whole stage
(stages/reduce.py still calls the (N, N) Gram path): per checkpoint, pass 1 (``layer_sq_norms``)
and pass 2 (``layer_summary``) as one task per layer, then ``CheckpointSums`` on the driver, adding
layer summaries as they finish, one checkpoint at a time. Tasks run on a local Ray
(``--executor ray``, ``max_calls=1``: every task gets a fresh worker process) or in fresh
subprocesses (``--executor process``, ``max_tasks_per_child=1``). Peak RSS is measured, not
estimated: ``getrusage(RUSAGE_SELF).ru_maxrss`` of each task's process at its end, and of the driver
process (a fresh subprocess that does nothing else) at its end. "base" is the same measure for a
process that only imported the modules, so "peak − base" is what the reduce itself added.

Stores are synthetic but in the real format (ActivationStore.create_or_extend, then write_block from
two writer processes, as recorder actors write; built before the driver starts, in processes of
their own): a = 0.5·noise + 0.7·meaning[s] + 0.7·language[l], all |N(0, 1)|, so LRDS and SADS are
both clearly positive. Store write throughput (aggregate) and read throughput (per pass-1 task,
which reads its layer and little else) are printed too.
Growth: the least-squares slope of log(y) on log(x) over a sweep of one dimension, the others fixed.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lingua_ray import reduce as R  # noqa: E402
from lingua_ray.store import ActivationStore, GridSpec  # noqa: E402
from lingua_ray.summaries import Norms  # noqa: E402

MiB = 1 << 20
# K·S > perm_max_rows at every point, so the permutation subsample is at its cap throughout.
SWEEP_BASE = {"K": 10, "S": 400, "L": 4, "F": 512, "C": 1}
SWEEP = {"S": [400, 800, 1600], "K": [10, 20, 40], "L": [2, 4, 8], "C": [1, 2, 3]}
TARGETS = [  # (name, K, S, L, F, C)
    ("FLORES x 10 languages, BLOOM-7b1 depth, F = 2,048", 10, 997, 30, 2048, 1),
    ("FLORES-200, all 204 languages", 204, 997, 2, 512, 1),
    ("FLORES-200, all 204 languages, 3 checkpoints", 204, 997, 2, 512, 3),
    ("one BLOOM-7b1-wide layer", 10, 997, 1, 16384, 1),
]


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss() -> int:
    """This process's peak resident set since it started (VmHWM), in bytes. Not ru_maxrss: Linux
    carries that over fork and exec, so a task process would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- synthetic store


def build_store(path: str, K: int, S: int, L: int, F: int, C: int, unit_block: int = 16, seed: int = 0,
                writers: int = 2) -> dict:
    """Create the store, then write the planted grid block by block from ``writers`` processes
    (each block owns its shards, as recorder actors do). Returns the aggregate write throughput."""
    langs, units = [f"l{k:03d}" for k in range(K)], [f"u{s}" for s in range(S)]
    spec = GridSpec(checkpoints=[{"label": f"c{c}", "revision": None, "step": c, "fingerprint": {"c": c}}
                                 for c in range(C)],
                    languages=langs, unit_ids=units, texts={lg: [f"{lg}-{u}" for u in units] for lg in langs},
                    n_layers=L, n_neurons=F, statistics=["mean"], identity={"bench": "reduce_scale", "seed": seed})
    st = ActivationStore.create_or_extend(path, spec, unit_block=unit_block)
    todo = list(st.missing_blocks())
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(writers, mp_context=mp.get_context("spawn")) as pool:
        nbytes = sum(pool.map(_write_blocks, [(path, todo[i::writers], langs, L, F, seed) for i in range(writers)]))
    dt = time.perf_counter() - t0
    return {"write_s": dt, "write_MBps": nbytes / dt / 1e6, "store_GB": nbytes / 1e9, "n_blocks": len(todo)}


def _write_blocks(job) -> int:
    path, blocks, langs, L, F, seed = job
    st = ActivationStore(path, mode="r+")
    nbytes = 0
    for ck, lang, s0, s1 in blocks:
        c, k = int(ck[1:]), langs.index(lang)
        meaning = np.abs(np.random.default_rng([seed, 1, s0]).normal(size=(s1 - s0, L, F)))
        language = np.abs(np.random.default_rng([seed, 2, k]).normal(size=(1, L, F)))
        noise = np.abs(np.random.default_rng([seed, 3, c, k, s0]).normal(size=(s1 - s0, L, F)))
        a = (0.5 * noise + 0.7 * meaning + 0.7 * language).astype(np.float32)
        st.write_block(ck, lang, s0, {"mean": a}, np.ones(s1 - s0, dtype=np.int32))
        nbytes += a.nbytes
    return nbytes


# --------------------------------------------------------------------------- tasks and executors


def _task(kind: str, *args):
    """Run one task body in this (fresh) process; return (result, its peak RSS, wall s, CPU s).

    The peak is taken after pickling the result once, as sending it back does."""
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "q":  # pass 1; the layer index comes back with q, tasks finish in any order
        out = (args[2], R.layer_sq_norms(*args))
    elif kind == "summary":
        out = R.layer_summary(*args)
    else:  # "noop": the base RSS of a task process
        out = None
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    len(pickle.dumps(out, protocol=5))  # the serialised copy that sending the result back costs
    return out, peak_rss(), dt, cpu


class ProcessExecutor:
    def __init__(self, n: int):
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"  # inherited by the spawned workers: one CPU per task, as Ray gives
        self.pool = cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), max_tasks_per_child=1)

    def submit(self, *args):
        return self.pool.submit(_task, *args)

    def as_completed(self, futures: list):
        """Yield results as they finish, dropping each future (and its result) once yielded."""
        pending = set(futures)
        futures.clear()
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            while done:
                yield done.pop().result()

    def close(self):
        self.pool.shutdown()


class RayExecutor:
    def __init__(self, n: int):
        import ray

        self.ray = ray
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
        self.task = ray.remote(num_cpus=1, max_calls=1)(_task)

    def submit(self, *args):
        return self.task.remote(*args)

    def as_completed(self, refs: list):
        todo = list(refs)
        refs.clear()  # the caller's list would keep every result alive in the object store
        while todo:
            done, todo = self.ray.wait(todo, num_returns=1)
            yield self.ray.get(done[0])

    def close(self):
        self.ray.shutdown()


def drive(path: str, executor: str, n_workers: int, settings: dict) -> dict:
    """The driver: both passes per checkpoint, one checkpoint at a time; only scalars are kept."""
    ex = (RayExecutor if executor == "ray" else ProcessExecutor)(n_workers)
    task_base = max(r[1] for r in ex.as_completed([ex.submit("noop") for _ in range(n_workers)]))
    cpu0 = time.process_time()
    base = peak_rss()  # modules imported, executor started: what any driver pays before reducing
    t0 = time.perf_counter()
    store = ActivationStore(path)
    C, K, S, L, F = store.shape
    plan = R.plan_for_store(path, **settings)
    task_peak, task_max_s, read_s, task_cpu, out = 0, 0.0, 0.0, 0.0, []
    for ci, ck in enumerate(store.checkpoints):
        qs = [None] * L
        refs = [ex.submit("q", path, ck, layer, plan) for layer in range(L)]
        for (layer, q), rss, dt, cpu in ex.as_completed(refs):
            qs[layer] = q
            task_peak, task_max_s, task_cpu = max(task_peak, rss), max(task_max_s, dt), task_cpu + cpu
            read_s += dt  # pass 1 reads its layer once and does little else: per-task read throughput
        norms = Norms.from_layers(qs)
        del qs
        sums = R.CheckpointSums(plan, norms)
        refs = [ex.submit("summary", path, ck, layer, plan, norms) for layer in range(L)]
        for n_done, (summary, rss, dt, cpu) in enumerate(ex.as_completed(refs), 1):  # empties refs
            sums.add(summary)
            del summary
            task_peak, task_max_s, task_cpu = max(task_peak, rss), max(task_max_s, dt), task_cpu + cpu
            print(f"[reduce] checkpoint {ci + 1}/{C} {ck}: layers {n_done}/{L} done; driver RSS {_rss() / MiB:.0f} MiB",
                  file=sys.stderr, flush=True)
        res = sums.results()
        del sums
        perm, boot = res["permutation"], res["bootstrap"]
        out.append({"lrds": res["scores"]["lrds"], "sads": res["scores"]["sads"],
                    "lrds_p": perm["overall"]["lrds"].p_value if perm else None,
                    "sads_p": perm["overall"]["sads"].p_value if perm else None,
                    "lrds_ci": [boot["overall"]["lrds"].lo, boot["overall"]["lrds"].hi] if boot else None})
        del res
    wall = time.perf_counter() - t0
    ex.close()
    return {"wall_s": wall, "driver_cpu_s": time.process_time() - cpu0, "task_cpu_s": task_cpu,
            "driver_peak": peak_rss(), "driver_base": base, "task_peak": task_peak,
            "task_base": task_base, "task_max_s": task_max_s, "read_MBps": C * K * S * L * F * 4 / read_s / 1e6,
            "block": plan.block, "S_p": plan.S_p, "plan_task_bytes": plan.task_bytes(), "checkpoints": out}


# --------------------------------------------------------------------------- one grid, end to end


def run_grid(K, S, L, F, C, args) -> dict:
    root = tempfile.mkdtemp(prefix="reduce_scale_", dir=args.workdir)
    path = os.path.join(root, "store.zarr")
    try:
        w = _child(["--_build", json.dumps([path, K, S, L, F, C, args.unit_block])])
        settings = {"n_boot": args.n_boot, "n_perm": args.n_perm, "max_task_bytes": args.max_task_bytes,
                    "perm_max_rows": args.perm_max_rows}
        d = _child(["--_drive", json.dumps([path, args.executor, args.workers, settings])])
        return {"K": K, "S": S, "L": L, "F": F, "C": C, **w, **d}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _child(argv: list[str]) -> dict:
    p = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"child {argv[0]} failed with exit code {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def row(r: dict) -> str:
    """Two lines per grid: what was run and the numbers; then the scores (a sanity check)."""
    ck = r["checkpoints"][0]
    return (f"K={r['K']} S={r['S']} L={r['L']} F={r['F']} C={r['C']} (N={r['K'] * r['S']:,}, "
            f"store {r['store_GB']:.2f} GB, block {r['block']}, S_p {r['S_p']}): wall {r['wall_s']:.1f} s | "
            f"driver peak {r['driver_peak'] / MiB:.0f} MiB (base {r['driver_base'] / MiB:.0f}) | "
            f"task peak {r['task_peak'] / MiB:.0f} MiB (base {r['task_base'] / MiB:.0f}; "
            f"modelled arrays {r['plan_task_bytes'] / MiB:.0f}) | slowest task {r['task_max_s']:.1f} s | "
            f"CPU: tasks {r['task_cpu_s']:.1f} s, driver {r['driver_cpu_s']:.1f} s\n"
            f"    store write {r['write_MBps']:.0f} MB/s, read {r['read_MBps']:.0f} MB/s per task (pass 1); "
            f"checkpoint 0: LRDS {ck['lrds']:.4f} (p {ck['lrds_p']}), SADS {ck['sads']:.4f} (p {ck['sads_p']})")


def growth(results: list[dict], dim: str) -> str:
    x = np.log([r[dim] for r in results])
    fits = []
    for name, key, base in (("wall", "wall_s", None), ("task CPU", "task_cpu_s", None),
                            ("driver CPU", "driver_cpu_s", None), ("driver", "driver_peak", "driver_base"),
                            ("task", "task_peak", "task_base")):
        y = np.array([r[key] - (r[base] if base else 0) for r in results], dtype=float)
        slope = np.polyfit(x, np.log(np.maximum(y, 1.0)), 1)[0]
        fits.append(f"{name} ∝ {dim}^{slope:.2f}")
    return f"growth with {dim} ({', '.join(str(r[dim]) for r in results)}): " + "; ".join(fits) + \
        "  (RSS: peak − base)"


def perm_cost(n_perm: int) -> None:
    """ms per permutation of each null on a random cosine over K × S_p rows (the task's inner loop)."""
    from lingua_ray.scores import lrds_null, permutation_draws, sads_null

    rng = np.random.default_rng(0)
    for K, S_p in ((9, 60), (10, 204), (204, 10), (2, 1024), (45, 45)):
        X = np.abs(rng.normal(size=(K * S_p, 64)))
        G = X @ X.T
        n = np.sqrt(np.diag(G))
        C = G / n[:, None] / n[None, :]
        pi, sigma = permutation_draws(K, S_p, n_perm, 0)
        t0 = time.perf_counter()
        lrds_null(C, K, S_p, pi)
        t1 = time.perf_counter()
        sads_null(C, K, S_p, sigma)
        t2 = time.perf_counter()
        print(f"K={K:>3} S_p={S_p:>4} (rows {K * S_p:>5}): LRDS {1e3 * (t1 - t0) / n_perm:6.2f} ms/permutation "
              f"({K * S_p * S_p:,} entries), SADS {1e3 * (t2 - t1) / n_perm:6.2f} ms ({S_p * K * K:,} entries)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small grids: a smoke run")
    ap.add_argument("--sweep", action="store_true", help="vary S, K, L, C around K=10 S=200 L=4 F=512 C=1")
    ap.add_argument("--targets", action="store_true", help="the issue's target grids (long on 2 cores)")
    ap.add_argument("--perm-cost", action="store_true", help="ms per permutation of each null, by K and S_p")
    ap.add_argument("--grid", action="append", default=[], help="K,S,L,F (repeatable)")
    ap.add_argument("--checkpoints", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--max-task-bytes", type=int, default=1 << 30)
    ap.add_argument("--perm-max-rows", type=int, default=2048)
    ap.add_argument("--unit-block", type=int, default=16)
    ap.add_argument("--executor", choices=["ray", "process"], default="ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the temporary stores go (default: $TMPDIR)")
    ap.add_argument("--_build", help=argparse.SUPPRESS)
    ap.add_argument("--_drive", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        print(json.dumps(build_store(*json.loads(args._build))))
        return
    if args._drive:
        print(json.dumps(drive(*json.loads(args._drive))))
        return
    print(f"# bench_reduce_scale  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}; executor={args.executor} workers={args.workers} "
          f"n_boot={args.n_boot} n_perm={args.n_perm} max_task_bytes={args.max_task_bytes:,} "
          f"perm_max_rows={args.perm_max_rows}", flush=True)
    if args.perm_cost:
        perm_cost(args.n_perm)
    grids = [tuple(int(v) for v in g.split(",")) + (args.checkpoints,) for g in args.grid]
    if args.quick:
        grids += [(5, 60, 2, 64, 1), (5, 120, 2, 64, 2)]
    for K, S, L, F, C in grids:
        print(row(run_grid(K, S, L, F, C, args)), flush=True)
    if args.sweep:
        done: dict = {}  # the base grid is in every sweep: run it once
        for dim, values in SWEEP.items():
            results = []
            for v in values:
                g = {**SWEEP_BASE, dim: v}
                key = tuple(g[d] for d in "KSLFC")
                if key not in done:
                    done[key] = run_grid(*key, args)
                    print(row(done[key]), flush=True)
                results.append(done[key])
            print(growth(results, dim), flush=True)
    if args.targets:
        for name, K, S, L, F, C in TARGETS:
            print(f"## {name}", flush=True)
            print(row(run_grid(K, S, L, F, C, args)), flush=True)


if __name__ == "__main__":
    main()
