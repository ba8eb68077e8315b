"""A lease on a store: one driver writes a store at a time.

The lease is a small JSON file beside the store (``<store>.lease``) naming its owner (host, pid,
run, start). It is taken with an exclusive create — ``O_CREAT | O_EXCL`` on a POSIX file system,
which NFSv3+ and Lustre/GPFS honour atomically — renewed by a heartbeat thread, and expires
``ttl_s`` after the last heartbeat, so a killed driver never locks a store for good.

A second driver is refused with a message naming the owner and how to break a stale lease.

Object stores (s3://, gs:// through fsspec): the create uses fsspec's exclusive mode ``"xb"``
where the backend implements it (S3 conditional writes with If-None-Match, GCS
``ifGenerationMatch=0``); where it does not, fsspec raises and the lease is refused with a message
saying so rather than pretending. Renewal is a plain overwrite by the owner, checked by token.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass


class LeaseError(RuntimeError):
    """The store is leased by another driver (or the backend cannot give an exclusive create)."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


class _Files:
    """The three file operations the lease needs, for a local path or an fsspec URL."""

    def __init__(self, path: str):
        self.path = path
        self.fs = None
        if "://" in path and not path.startswith("file://"):
            import fsspec

            self.fs, self.path = fsspec.core.url_to_fs(path)

    def create_exclusive(self, data: bytes) -> bool:
        if self.fs is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError) as e:
            raise LeaseError(f"cannot lease {self.path!r}: this file system has no exclusive create ({e}); "
                             "give each driver its own store path") from e

    def read(self) -> dict | None:
        try:
            if self.fs is None:
                with open(self.path, "rb") as f:
                    return json.loads(f.read())
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}  # half-written by a driver that died mid-create: treat as expired

    def overwrite(self, data: bytes) -> None:
        if self.fs is None:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            with self.fs.open(self.path, "wb") as f:
                f.write(data)

    def remove_if(self, token: object) -> None:
        """Remove the lease only if it still holds ``token`` (the stale one we saw)."""
        if self.fs is not None:  # object stores: read-then-delete, a documented small window
            held = self.read()
            if held is not None and held.get("token") == token:
                self.remove()
            return
        grave = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, grave)  # atomic: of two drivers taking over, one moves the file
        except FileNotFoundError:
            return
        try:
            with open(grave, "rb") as f:
                moved = json.loads(f.read() or b"{}")
        except json.JSONDecodeError:
            moved = {}
        if moved.get("token") != token:
            try:  # we moved a fresh lease another driver just took: put it back (link fails if taken)
                os.link(grave, self.path)
            except FileExistsError:
                pass
        os.unlink(grave)

    def remove(self) -> None:
        try:
            if self.fs is None:
                os.unlink(self.path)
            else:
                self.fs.rm(self.path)
        except FileNotFoundError:
            pass


@dataclass
class StoreLease:
    """``with StoreLease(store_path, run="name"):`` — hold the store's lease for the block.

    ttl_s: a lease whose last heartbeat is older than this is stale and may be taken over.
    heartbeat_s: renewal period (default ttl_s / 4).
    """

    store_path: str
    run: str = ""
    ttl_s: float = 120.0
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        self.lease_path = self.store_path.rstrip("/") + ".lease"
        self._files = _Files(self.lease_path)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = _now()

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "run": self.run, "token": self.token,
                "started_utc": _iso(self.started), "renewed": _now(), "renewed_utc": _iso(_now()),
                "ttl_s": self.ttl_s}

    def acquire(self) -> "StoreLease":
        data = json.dumps(self._record()).encode()
        if not self._files.create_exclusive(data):
            held = self._files.read()
            if held is None or self._stale(held):
                # Take over a stale lease: remove it, then the same exclusive create; if two drivers
                # race here, only one create succeeds and the other is refused below.
                self._files.remove_if(None if held is None else held.get("token"))
                if self._files.create_exclusive(data):
                    self._start_heartbeat()
                    return self
                held = self._files.read() or {}
            raise LeaseError(self._refusal(held))
        self._start_heartbeat()
        return self

    def _stale(self, held: dict) -> bool:
        renewed = held.get("renewed")
        ttl = float(held.get("ttl_s", self.ttl_s))
        return not isinstance(renewed, (int, float)) or _now() - renewed > ttl

    def _refusal(self, held: dict) -> str:
        ago = _now() - held["renewed"] if isinstance(held.get("renewed"), (int, float)) else float("nan")
        return (f"store {self.store_path!r} is being written by another driver: host {held.get('host')!r} "
                f"pid {held.get('pid')} run {held.get('run')!r} since {held.get('started_utc')} (last heartbeat "
                f"{ago:.0f}s ago; the lease expires {held.get('ttl_s', self.ttl_s):g}s after it). Wait for it to "
                f"finish, use another store.path, or — if that driver is gone — delete {self.lease_path}")

    def _start_heartbeat(self) -> None:
        period = self.heartbeat_s or self.ttl_s / 4

        def beat() -> None:
            while not self._stop.wait(period):
                held = self._files.read()
                if not held or held.get("token") != self.token:
                    return  # broken by hand: never overwrite someone else's lease
                rec = dict(held, renewed=_now(), renewed_utc=_iso(_now()))
                self._files.overwrite(json.dumps(rec).encode())

        self._thread = threading.Thread(target=beat, name="lingua_ray-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._files.read()
        if held and held.get("token") == self.token:
            self._files.remove()

    def __enter__(self) -> "StoreLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
