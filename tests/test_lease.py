"""The store lease: exclusive, named owner, heartbeat, expiry, take-over, release."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from lingua_ray.lease import LeaseError, StoreLease


def test_second_driver_refused_naming_owner(tmp_path):
    path = str(tmp_path / "a.zarr")
    with StoreLease(path, run="first"):
        with pytest.raises(LeaseError) as err:
            StoreLease(path, run="second").acquire()
        msg = str(err.value)
        assert "run 'first'" in msg and "pid" in msg and "a.zarr.lease" in msg and "\n" not in msg
    # Released on exit: the next driver gets it.
    with StoreLease(path, run="third"):
        pass


def test_released_on_exception(tmp_path):
    path = str(tmp_path / "a.zarr")
    with pytest.raises(ZeroDivisionError):
        with StoreLease(path):
            1 / 0
    assert not (tmp_path / "a.zarr.lease").exists()


def test_heartbeat_renews_and_stale_lease_is_taken_over(tmp_path):
    path = str(tmp_path / "a.zarr")
    lease = StoreLease(path, run="beating", ttl_s=1.0, heartbeat_s=0.1).acquire()
    first = json.loads((tmp_path / "a.zarr.lease").read_text())["renewed"]
    time.sleep(1.5)  # longer than the ttl: only the heartbeat keeps it alive
    assert json.loads((tmp_path / "a.zarr.lease").read_text())["renewed"] > first
    with pytest.raises(LeaseError):
        StoreLease(path, ttl_s=1.0).acquire()
    lease._stop.set()  # the owner "dies": no more heartbeats
    lease._thread.join()
    time.sleep(1.3)
    with StoreLease(path, run="heir", ttl_s=1.0):
        assert json.loads((tmp_path / "a.zarr.lease").read_text())["run"] == "heir"


def _try(path, q):
    try:
        StoreLease(path, run="racer", ttl_s=30).acquire()
        q.put("won")
        time.sleep(2)
    except LeaseError:
        q.put("refused")


def test_racing_drivers_exactly_one_wins(tmp_path):
    path = str(tmp_path / "a.zarr")
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_try, args=(path, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert got == ["refused"] * 3 + ["won"]
