"""schedule.run_units on a real local Ray: failures aggregated, checkpoint affinity, idle actors fed."""

from __future__ import annotations

import time

import pytest
import ray

from lingua_ray import schedule
from lingua_ray.config import ClusterConfig

pytestmark = pytest.mark.usefixtures("ray_local")


class FakeWorker:
    """Loads a 'checkpoint' only when a unit needs another one, like worker.ModelWorker."""

    def __init__(self, delay: float = 0.0):
        self.held = None
        self.loads = []
        self.delay = delay

    def ping(self):
        return True

    def work(self, checkpoint, key, delay=None):
        if checkpoint != self.held:
            self.held = checkpoint
            self.loads.append(checkpoint)
        time.sleep(self.delay if delay is None else delay)
        if key == "bad":
            raise ValueError(f"unit {key} is broken")
        return {"checkpoint": checkpoint, "key": key}

    def history(self):
        return self.loads


def _pool(n, **kw):
    return schedule.actor_pool(FakeWorker, (), n, ClusterConfig(cpus_per_actor=0.5, placement_timeout_s=60, **kw))


def test_affinity_each_actor_keeps_its_checkpoint():
    units = [schedule.WorkUnit(ck, (i,)) for ck in ("A", "B", "C") for i in range(8)]
    done = []
    with _pool(2) as actors:
        schedule.run_units(units, actors, lambda a, u: a.work.remote(u.checkpoint, u.key[0], 0.02),
                           lambda u, r: done.append((u.checkpoint, u.key)))
        loads = ray.get([a.history.remote() for a in actors])
    assert sorted(done) == sorted((u.checkpoint, u.key) for u in units)
    # Handing each idle actor the longest queue would rotate through A, B, C and reload on most of
    # the 24 units; with affinity an actor switches only when its checkpoint's queue runs dry.
    assert sum(len(x) for x in loads) <= 4, loads
    assert {c for x in loads for c in x} == {"A", "B", "C"}


def test_idle_actor_gets_more_work():
    units = [schedule.WorkUnit("A", (i,)) for i in range(12)]
    served = {}
    with _pool(2) as actors:
        ids = {a._actor_id.hex(): i for i, a in enumerate(actors)}

        def submit(a, u):
            delay = 0.4 if ids[a._actor_id.hex()] == 0 else 0.01  # actor 0 is slow
            ref = a.work.remote(u.checkpoint, u.key[0], delay)
            served[u.key[0]] = ids[a._actor_id.hex()]
            return ref

        schedule.run_units(units, actors, submit, lambda u, r: None)
    fast = sum(1 for v in served.values() if v == 1)
    assert fast >= 9, served  # work is handed to whichever actor is idle, not split evenly


def test_failures_are_aggregated_after_all_other_units():
    keys = ["a", "bad", "b", "bad", "c", "d"]
    units = [schedule.WorkUnit("A", (k, i)) for i, k in enumerate(keys)]
    done = []
    with _pool(2) as actors:
        with pytest.raises(schedule.WorkUnitsFailed) as err:
            schedule.run_units(units, actors, lambda a, u: a.work.remote(u.checkpoint, u.key[0]),
                               lambda u, r: done.append(r["key"]), what="record")
    assert sorted(done) == ["a", "b", "c", "d"]  # every good unit finished despite the failures
    msg = str(err.value)
    assert len(err.value.failures) == 2 and "2 work unit(s) failed" in msg
    assert "unit bad is broken" in msg and "re-run the same command to retry only these" in msg
    assert "\n" not in msg


def test_gpu_request_on_cpu_cluster_fails_fast_naming_the_resource():
    t0 = time.perf_counter()
    with pytest.raises(schedule.PlacementError, match="gpus_per_actor=1.*0 GPU"):
        with schedule.actor_pool(FakeWorker, (), 1, ClusterConfig(gpus_per_actor=1.0)):
            pass
    assert time.perf_counter() - t0 < 10


def _sleep_then(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def test_map_tasks_in_order_yields_in_call_order_when_later_tasks_finish_first():
    """The reduce stage adds per-layer results in floating point as they are yielded: in completion
    order a re-run's numbers could differ in their last bits. Task 0 here finishes last."""
    calls = [(0, 1.5), (1, 0.0), (2, 0.0)]
    got = list(schedule.map_tasks_in_order(_sleep_then, calls, ClusterConfig(num_cpus=2)))
    assert got == [(0, 0), (1, 1), (2, 2)]
