"""Generic Ray machinery, and the only module that knows Ray.

Starting or joining Ray, an actor pool, the checkpoint-affine ``run_units``, parallel tasks and
progress. No domain knowledge: it knows neither models nor metric formulas nor the store layout;
the stages hand it actor classes, task functions and work units.

Checkpoint affinity: each actor holds one model replica and loads a checkpoint only when its
next unit needs another one, so the driver hands an idle actor more work from the checkpoint it
already holds and checkpoints are reloaded rarely.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import ray

from lingua_ray.config import ClusterConfig

log = logging.getLogger("lingua_ray")


def init_ray(cfg: ClusterConfig) -> None:
    """Join ``cfg.address`` ("auto" under ``ray job submit``) or start a local Ray on localhost."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        return
    # Local workers run in this interpreter's environment; on a cluster the runtime env or image does.
    ray.init(
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,  # localhost by default: never expose a local dashboard
        log_to_driver=True,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}},
    )


class PlacementError(RuntimeError):
    """Actors asked for resources the cluster cannot give within the wait."""


@contextmanager
def actor_pool(actor_cls: type, args: Sequence[Any], n: int, cfg: ClusterConfig) -> Iterator[list]:
    """``n`` actors of ``actor_cls(*args)`` with the cluster's per-actor resources; killed on exit.

    The class must have a ``ping()`` method: the pool waits ``cfg.placement_timeout_s`` for every
    actor to start and fails naming the resource when the cluster cannot place them (asking
    for GPUs on a CPU-only cluster would otherwise wait forever).
    """
    total = ray.cluster_resources()
    cpus = min(cfg.cpus_per_actor, total.get("CPU", 1.0))  # more CPUs than exist never starts
    if cpus < cfg.cpus_per_actor:
        log.warning("cluster.cpus_per_actor=%s > the cluster's %s CPUs; using %s",
                    cfg.cpus_per_actor, total.get("CPU"), cpus)
    if cfg.gpus_per_actor > 0 and total.get("GPU", 0) < cfg.gpus_per_actor:
        raise PlacementError(f"cluster.gpus_per_actor={cfg.gpus_per_actor} but the cluster has "
                             f"{total.get('GPU', 0):g} GPU(s); use cluster=local or a GPU cluster")
    n = max(1, n) if cfg.gpus_per_actor > 0 else min(max(1, n), max(1, int(total.get("CPU", 1.0) // cpus)))
    cls = ray.remote(actor_cls).options(num_gpus=cfg.gpus_per_actor, num_cpus=cpus,
                                        max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries)
    actors = [cls.remote(*args) for _ in range(n)]
    try:
        ready, pending = ray.wait([a.ping.remote() for a in actors], num_returns=n,
                                  timeout=cfg.placement_timeout_s)
        if pending:
            raise PlacementError(
                f"{len(pending)} of {n} actor(s) not placed after cluster.placement_timeout_s="
                f"{cfg.placement_timeout_s:g}s (each asks for {cpus:g} CPU, {cfg.gpus_per_actor:g} GPU; "
                f"the cluster has {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU)")
        ray.get(ready)
        yield actors
    finally:
        for a in actors:
            ray.kill(a)


@dataclass
class WorkUnit:
    """One schedulable piece of work; ``key`` is the stage's own (e.g. (language, s0, s1))."""

    checkpoint: str
    key: tuple


class WorkUnitsFailed(RuntimeError):
    """Some work units failed after Ray's retries; every other unit finished and was kept."""

    def __init__(self, failures: list[tuple[WorkUnit, BaseException]], what: str):
        self.failures = failures
        first = "; ".join(f"{u.checkpoint} {' '.join(map(str, u.key))}: {_one_line(e)}" for u, e in failures[:3])
        super().__init__(f"[{what}] {len(failures)} work unit(s) failed (first {min(3, len(failures))}: {first}). "
                         "Finished units are kept: re-run the same command to retry only these.")


def _one_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e  # a RayTaskError wraps the worker's exception
    text = str(cause).strip().splitlines()
    return (text[-1] if text else type(cause).__name__)[:300]


def run_units(units: Sequence[WorkUnit], actors: list, submit: Callable, on_done: Callable[[WorkUnit, Any], None],
              what: str = "work") -> None:
    """Run work units on actors, handing each idle actor more of the checkpoint it holds.

    ``submit(actor, unit) -> ObjectRef``; ``on_done(unit, value)`` runs on the driver. Failed
    units are collected and raised together as WorkUnitsFailed after all others finished, so
    one bad unit never discards the rest of the work.
    """
    queues: dict[str, deque] = defaultdict(deque)
    for u in units:
        queues[u.checkpoint].append(u)
    holding: dict[int, str | None] = {i: None for i in range(len(actors))}
    running: dict = {}
    errors: list[tuple[WorkUnit, BaseException]] = []

    def next_for(i: int) -> WorkUnit | None:
        ck = holding[i]
        if ck is None or not queues.get(ck):
            live = [c for c, q in queues.items() if q]
            if not live:
                return None
            ck = max(live, key=lambda c: len(queues[c]))  # the longest queue: fewest reloads overall
        holding[i] = ck
        return queues[ck].popleft()

    for i, a in enumerate(actors):
        u = next_for(i)
        if u is not None:
            running[submit(a, u)] = (i, u)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        i, u = running.pop(done[0])
        try:
            on_done(u, ray.get(done[0]))
        except Exception as e:  # noqa: BLE001 - reported together below
            log.warning("[%s] work unit %s %s failed: %s", what, u.checkpoint, u.key, _one_line(e))
            errors.append((u, e))
        nxt = next_for(i)
        if nxt is not None:
            running[submit(actors[i], nxt)] = (i, nxt)
    if errors:
        raise WorkUnitsFailed(errors, what)


def map_tasks(fn: Callable, calls: Sequence[tuple], cfg: ClusterConfig) -> list:
    """``[fn(*args) for args in calls]`` as parallel Ray tasks (retried), results in call order."""
    task = ray.remote(num_cpus=cfg.reducer_cpus, max_retries=cfg.max_task_retries)(fn)
    refs = [task.remote(*args) for args in calls]
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        _raise_cause(e, refs)


def map_tasks_in_order(fn: Callable, calls: Sequence[tuple], cfg: ClusterConfig) -> Iterator[tuple[int, Any]]:
    """``(index, fn(*calls[index]))`` in call order; all tasks run in parallel from the start.

    In order, not as each finishes: the driver adds the results up in floating point, and an order
    that depended on which task finished first would make the same run's numbers differ in their
    last bits from one run to the next. Each result's reference is dropped once yielded, so the
    driver never holds more than one result it has not consumed (finished ones wait in the object
    store, as they would for any consumer)."""
    task = ray.remote(num_cpus=cfg.reducer_cpus, max_retries=cfg.max_task_retries)(fn)
    refs = [task.remote(*args) for args in calls]
    for i in range(len(refs)):
        try:
            value = ray.get(refs[i])
        except ray.exceptions.RayTaskError as e:
            _raise_cause(e, [r for r in refs[i + 1:] if r is not None])
        refs[i] = None
        yield i, value


def _raise_cause(err: "ray.exceptions.RayTaskError", others: Sequence) -> None:
    """Re-raise a failed task's own exception (a one-line error such as StoreError naming the
    damaged cell), not RayTaskError, whose text is the remote traceback. The other tasks are
    cancelled and their results fetched, so Ray prints no unfetched tracebacks at exit."""
    for ref in others:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - already finished or gone
            pass
    for ref in others:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled or failed too: the first failure is the one reported
            pass
    cause = getattr(err, "cause", None)
    if isinstance(cause, Exception):
        raise cause from None
    raise err


def gather(refs: Sequence, what: str = "work") -> list:
    """The values of ``refs`` that succeeded; each failure is logged in one line and skipped (for
    best-effort calls whose loss the caller detects another way, e.g. flushing actors' writes)."""
    values = []
    for ref in refs:
        try:
            values.append(ray.get(ref))
        except Exception as e:  # noqa: BLE001 - the caller re-checks what the failure could have lost
            log.warning("[%s] %s", what, _one_line(e))
    return values


def put(value: Any):
    """Share a large read-only value with every task or actor once (an ObjectRef)."""
    return ray.put(value)


class Progress:
    """units done/total and tokens/s, printed at most every ``every`` seconds."""

    def __init__(self, total: int, what: str, every: float = 5.0, printer=print):
        self.total, self.what, self.every, self.printer = total, what, every, printer
        self.done = self.tokens = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, units: int, tokens: int = 0) -> None:
        self.done += units
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = f"  {self.tokens / max(now - self.t0, 1e-9):,.0f} tokens/s" if self.tokens else ""
            self.printer(f"[{self.what}] {self.done}/{self.total} units{rate}  {now - self.t0:,.1f}s", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
