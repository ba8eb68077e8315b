"""A real local Ray head for tests, started and stopped without touching any other Ray.

``ray start --head`` on 127.0.0.1 with every port picked free, its own short ``--temp-dir`` and
token auth with a token file of its own (``RAY_AUTH_TOKEN_PATH``), so ~/.ray is never read or
written. ``ray stop`` would stop every Ray on the machine, so ``stop()`` kills only the processes
of the head's own process group and their descendants (job drivers start sessions of their own).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Head:
    temp_dir: Path
    address: str            # the job server, http://127.0.0.1:<dashboard port>
    gcs: str                # 127.0.0.1:<port>
    env: dict               # what a client needs (RAY_ADDRESS, token auth) on top of os.environ
    pgid: int
    pids: set[int] = field(default_factory=set)

    def client_env(self, **extra: str) -> dict:
        return {**os.environ, **self.env, **extra}


def start(env: dict | None = None, num_cpus: int = 2, timeout_s: float = 120, token_env: bool = True) -> Head:
    """Start a head; ``env`` is added to its environment (inherited by every job driver).

    ``token_env``: RAY_AUTH_MODE=token with this head's own token file; False leaves auth to Ray's
    default (on when the head's HOME has ~/.ray/auth_token), for checking what the docs claim.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="lrh", dir="/tmp"))  # short: Ray's unix sockets live here
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    (gcs, dash, client, agent_http, agent_grpc, metrics, rt_agent, node_mgr, obj_mgr) = free_ports(9)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)} if token_env else {}
    head_env = {**os.environ, **(env or {}), **auth, "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    head_env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_agent}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
           "--num-gpus=0", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=head_env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    head = Head(temp_dir, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}",
                {**auth, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}, pgid=proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(head)
        raise RuntimeError("ray start --head did not return in time") from None
    head.pids |= _members(head)
    if proc.returncode != 0:
        stop(head)
        raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{out[-3000:]}")
    _wait_for_job_server(head, timeout_s)
    return head


def _members(head: Head) -> set[int]:
    """The head's processes: its process group, and everything started below them."""
    found = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == head.pgid:
                found.add(p.pid)
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    for pid in list(found | head.pids):
        try:
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            continue
    return found


def _wait_for_job_server(head: Head, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(head.address + "/api/version", timeout=5):
                return
        except Exception as e:  # noqa: BLE001 - 401 means it is up (token auth)
            if getattr(e, "code", None) in (401, 403):
                return
        time.sleep(1)
    stop(head)
    raise RuntimeError(f"the job server at {head.address} did not come up")


def stop(head: Head, grace_s: float = 10) -> None:
    """Kill this head's processes only (never `ray stop`: it stops every Ray on the machine)."""
    pids = _members(head) | head.pids
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
