"""Fault injection for tests/test_faults.py: a tiny run's config (Hydra overrides, composed the same
way the entry point does), driver subprocesses, and killers that find Ray's processes from outside.

Nothing here reaches into the library: faults are real signals sent to real processes (the
recorder actor, a reduce task's worker, the driver), chosen from the files a run writes.
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import psutil

from tiny_run import save_tiny, write_corpus

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BASE_LANGS = ["en", "fr", "id"]
ALL_LANGS = BASE_LANGS + ["de", "es"]  # de / es: the languages two drivers try to add at once
UNIT_BLOCK = 2
N_UNITS = 10  # 14 corpus units, 4 held out
N_BLOCKS = len(BASE_LANGS) * (N_UNITS // UNIT_BLOCK)  # work units of one checkpoint: 15
LEASE_TTL_S = 2.0
# Store arrays a record run writes, and those the reduce stage adds.
RECORD_ARRAYS = ("activations", "n_tokens", "cell_crc32", "shard_bytes")
REDUCE_ARRAYS = ("key_score", "key_z", "key_mask")


def make_tiny(root: Path) -> Path:
    """Two tiny LLaMA folders (m0, m1: other random weights, same shape) and a 14-unit jsonl corpus
    in ALL_LANGS. Returns root."""
    for seed in (0, 1):
        save_tiny(root / f"m{seed}", seed)
    write_corpus(root / "corpus.jsonl", 14, ALL_LANGS)
    return root


def overrides(root: Path, out: Path, languages=BASE_LANGS, weights: str = "m0", **extra) -> list[str]:
    """Hydra overrides of the tiny run: one checkpoint labelled m0 with the weights of folder ``weights``.

    extra: more ``key=value`` overrides, dots spelled "__" (store__path=...); they replace defaults."""
    ov = {"model.source": "local", "model.name": "tiny", "model.hf_id": "null", "model.gguf_package": "null",
          "model.checkpoints": f"[{{label: m0, path: '{root / weights}'}}]",
          "corpus": "jsonl", "corpus.path": f"'{root / 'corpus.jsonl'}'",
          "corpus.languages": f"[{','.join(languages)}]",
          "split.heldout_units": "4", "reduce.tau": "1.0", "reduce.n_boot": "50", "reduce.n_perm": "50",
          "cluster.num_cpus": "2", "store.unit_block": str(UNIT_BLOCK), "store.lease_ttl_s": f"{LEASE_TTL_S:g}",
          "run.out_dir": f"'{out}'", "stages": "[record,reduce,ablate]"}
    ov.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in ov.items()]


def compose(ov: list[str]):
    """The RunConfig the entry point (workflows/pipeline.py) would build from these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lingua_ray.config import register_configs, to_run_config

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_run_config(hydra_compose("config", overrides=list(ov)))


# ---------------------------------------------------------------- driver subprocesses


class Driver:
    """``workflows/pipeline.py <overrides>`` in a subprocess; stdout+stderr to ``log``.

    Joins the test session's Ray (cluster.address), so killing the driver kills only the driver:
    Ray then ends its actors and tasks, as on a real cluster.
    """

    started: ClassVar[list[Driver]] = []  # every driver of the session, so a failed test's teardown can end its own

    def __init__(self, ov: list[str], log: Path, address: str):
        self.log = log
        Driver.started.append(self)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
        env.pop("LINGUA_RAY_DEBUG", None)
        self._fh = open(log, "w")  # noqa: SIM115 - the child writes it until it ends
        self.proc = subprocess.Popen([sys.executable, "workflows/pipeline.py", *ov, f"cluster.address={address}"],
                                     cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no finally, no lease release runs."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._fh.close()

    @classmethod
    def kill_stragglers(cls) -> None:
        """SIGKILL drivers started here that are still running (a test failed before waiting)."""
        while cls.started:
            d = cls.started.pop()
            if d.alive():
                d.kill()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._fh.close()

    def kill_when(self, cond: Callable[[], bool], timeout: float = 300, every: float = 0.005) -> None:
        """Poll ``cond`` and SIGKILL the driver the first time it holds; fail if the driver ends first."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if cond():
                self.kill()
                return
            if not self.alive():
                raise AssertionError(f"driver ended (rc {self.proc.returncode}) before the kill point:\n"
                                     + self.output()[-3000:])
            time.sleep(every)
        self.kill()
        raise AssertionError(f"kill point not reached in {timeout}s:\n" + self.output()[-3000:])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- what a run has written so far


def done_blocks(store: str | Path) -> int:
    """Work units whose completion markers are on disk (cell_crc32 has one chunk per block)."""
    return len(glob.glob(os.path.join(store, "cell_crc32", "c", "*", "*", "*")))


def ablation_units(out_dir: Path) -> list[Path]:
    """Finished evaluation-unit records (atomic writes: temp files are dot files, not matched)."""
    return sorted((out_dir / "ablation" / "units").glob("*.json"))


def lease_of(store: str | Path) -> dict | None:
    try:
        return json.loads(Path(str(store).rstrip("/") + ".lease").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_lease_stale(store: str | Path, timeout: float = 30) -> None:
    """Wait until a dead holder's lease is older than the ttl it recorded (then it may be taken over)."""
    def stale() -> bool:
        held = lease_of(store)
        return held is None or time.time() - held["renewed"] > held["ttl_s"] + 0.2
    wait_until(stale, timeout, f"the lease on {store} to expire")


# ---------------------------------------------------------------- Ray processes of this session


def ray_procs(prefix: str) -> list[psutil.Process]:
    """Live processes of THIS session's Ray (descendants of this process: the local Ray was started
    here) whose title starts with ``prefix`` (Ray titles workers "ray::<Class>.<method>")."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
            if cmd and cmd[0].startswith(prefix) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class ActorKiller:
    """``with ActorKiller("ray::ModelWorker", cond):`` SIGKILL that actor's process once, the first
    time ``cond()`` holds, from a background thread polling every ``every`` seconds.

    After the block: ``killed`` (pid or None) and ``state`` (what ``cond_state()`` returned at the kill).
    """

    def __init__(self, prefix: str, cond: Callable[[], bool], state: Callable[[], object] = lambda: None,
                 every: float = 0.005):
        self.prefix, self.cond, self.state_fn, self.every = prefix, cond, state, every
        self.killed: int | None = None
        self.state = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="actor-killer", daemon=True)

    def _watch(self) -> None:
        target: psutil.Process | None = None
        while not self._stop.is_set() and self.killed is None:
            if target is None or not target.is_running():
                procs = ray_procs(self.prefix)  # found before the kill point: the kill itself is quick
                target = procs[0] if procs else None
            if target is not None and self.cond():
                self.state = self.state_fn()
                os.kill(target.pid, signal.SIGKILL)
                self.killed = target.pid
                return
            time.sleep(self.every)

    def __enter__(self) -> ActorKiller:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def first_call_hangs(module: str, name: str, flag_dir: str) -> Callable:
    """A stand-in for task ``module.name``: the first call (of any worker, decided by an exclusive
    create of ``flag_dir/first``) writes its pid there and sleeps, to be SIGKILLed mid-task; every
    other call — Ray's retry included — runs the real function unchanged.

    Pickled by value (a closure), so Ray workers need not import this module.
    """
    def task(*args):
        import importlib
        import os as _os
        import time as _time

        real = getattr(importlib.import_module(module), name)  # the worker's own, unpatched import
        try:
            fd = _os.open(_os.path.join(flag_dir, "first"), _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
        except FileExistsError:
            return real(*args)
        _os.write(fd, str(_os.getpid()).encode())
        _os.close(fd)
        _time.sleep(600)  # killed here by the test
        return real(*args)

    task.__name__ = name  # the worker's title: ray::<name>
    return task


def kill_announced(flag_dir: str, timeout: float = 120) -> int:
    """Wait for ``first_call_hangs``'s pid, check it is a Ray worker of this session, SIGKILL it."""
    announced = Path(flag_dir) / "first"
    wait_until(lambda: announced.exists() and announced.read_text().strip() != "", timeout, "a task to hang")
    pid = int(announced.read_text())
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    assert pid in mine and psutil.Process(pid).cmdline()[0].startswith("ray::"), f"pid {pid} is no Ray worker of ours"
    os.kill(pid, signal.SIGKILL)
    return pid


# ---------------------------------------------------------------- comparing outputs


def numeric(results: dict, sections=None) -> dict:
    """The parts of results.json that are numbers of the analysis: every top-level section but
    "run" (paths, times, the config echo), or only ``sections``."""
    return {k: v for k, v in results.items() if (k in sections if sections else k != "run")}


def assert_close(got, want, where: str = "", rel: float = 1e-6, abs_: float = 1e-6) -> None:
    """Same structure, same strings/ints, floats within ``rel`` (or ``abs_`` near 0)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} vs {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}", rel, abs_)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]", rel, abs_)
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=rel, abs_tol=abs_), \
            f"{where}: {got!r} vs {want!r}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def assert_same_results(got: dict, want: dict) -> None:
    """results.json of two runs: grid, settings and reduce numbers bit for bit; ablation perplexities
    to float32 rounding. Perplexities of the same unit computed in different processes differ by up
    to ~4e-8 relative (same process: identical; 1 vs 2 torch threads: identical), so a resumed
    ablation, whose units come from several processes, cannot be bit-identical to one run."""
    assert sorted(got) == sorted(want)
    exact = [k for k in want if k not in ("run", "ablation")]
    assert numeric(got, exact) == numeric(want, exact)
    assert_close(got["ablation"], want["ablation"], "ablation")


def read_results(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


def store_arrays(path: str | Path, names=RECORD_ARRAYS + REDUCE_ARRAYS) -> dict[str, np.ndarray]:
    from lingua_ray.store import ActivationStore

    g = ActivationStore(str(path)).group
    return {n: g[n][:] for n in names if n in g}


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names) -> None:
    """Cell for cell: the same bytes (NaN fill included), array by array."""
    for n in names:
        assert n in got and n in want, f"array {n!r} missing ({sorted(got)} vs {sorted(want)})"
        np.testing.assert_array_equal(got[n], want[n], err_msg=f"store array {n!r} differs")
