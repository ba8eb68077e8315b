"""Submit the pipeline to a Ray cluster's job server: what ``bash cluster/submit.sh`` runs.

    bash cluster/submit.sh [--no-wait] [--submission-id=ID] [--address=URL] [--storage-root=PATH]
                           [--runtime-env=FILE] [--no-check] [hydra overrides...]

The job runs ``python workflows/pipeline.py cluster=gpu <overrides>`` on the head. The entrypoint
is one string that the head's /bin/sh parses once, so each override is quoted exactly once
(``shlex.join``) and reaches Hydra as typed: ``'store.path=s3://B/${run.name}.zarr'`` and
``'corpus.languages=[en, fr]'`` both arrive intact. (Ray ≥ 2.60's own CLI joins with shlex.join
too, so a script that quoted for the shell first had its quoting applied twice.)

Before anything is sent, every member of the command (each combination of a ``-m`` sweep) is
composed here and checked: the config rules (``config.validate``) and durable outputs
(``storage.durable``: a relative ``run.out_dir`` / ``store.path`` would land in Ray's temporary
copy of the working dir). ``LINGUA_RAY_STORAGE_ROOT`` (or ``--storage-root``) is handed to the job
through its runtime env, so the job resolves ``run.out_dir`` exactly as checked here.

Address: ``--address``, else ``RAY_ADDRESS``, else http://127.0.0.1:8265. Token auth (on by
default on a Ray 2.60 head that has a token): export ``RAY_AUTH_MODE=token``; Ray's client then
sends the token from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
Exit status: the job's (0 succeeded, 1 failed or stopped) when waiting; 0 once submitted with
``--no-wait``; 2 when refused before submitting.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lingua_ray.storage import STORAGE_ROOT_ENV, durable

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ENTRY = ("python", "workflows/pipeline.py")
CLUSTER_DEFAULT = "cluster=gpu"  # a later cluster=... override wins
ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
HYDRA_FLAGS = ("-m", "--multirun")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """Refused before anything was submitted; the message says what to do."""


@dataclass
class Options:
    """What the submitter was asked to do (see the module docstring for the flags)."""

    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    submission_id: str | None = None
    storage_root: str | None = None
    runtime_env: str = str(RUNTIME_ENV)
    wait: bool = True
    check: bool = True
    entry: tuple[str, ...] = ENTRY
    metadata: dict[str, str] = field(default_factory=dict)


def parse_args(argv: list[str]) -> Options:
    """Leading ``--flags`` are the submitter's; everything from the first other argument on (and
    Hydra's ``-m`` / ``--multirun`` anywhere) goes to Hydra."""
    opts = Options()
    args = list(argv)
    valued = {"--submission-id": "submission_id", "--address": "address", "--storage-root": "storage_root",
              "--runtime-env": "runtime_env"}
    while args and args[0].startswith("--") and args[0] not in HYDRA_FLAGS:
        a = args.pop(0)
        name, eq, value = a.partition("=")
        if a == "--no-wait":
            opts.wait = False
        elif a == "--no-check":
            opts.check = False
        elif name in valued:
            if not eq:
                if not args:
                    raise SubmitError(f"{name} needs a value ({name}=VALUE)")
                value = args.pop(0)
            setattr(opts, valued[name], value)
        else:
            raise SubmitError(f"unknown option {a!r}; the submitter takes --no-wait, --no-check, "
                              f"{', '.join(v + '=...' for v in valued)}, then Hydra overrides")
    opts.overrides = args
    return opts


def entrypoint(overrides: list[str], entry: tuple[str, ...] = ENTRY) -> str:
    """The job's command line: quoted once, for the head's /bin/sh."""
    return shlex.join([*entry, CLUSTER_DEFAULT, *overrides])


def runtime_env(path: str | os.PathLike, storage_root: str | None) -> dict:
    """cluster/runtime_env.yaml with a relative working_dir made absolute (it is relative to the
    repository root, the parent of cluster/) and the storage root handed to the job."""
    import yaml

    p = Path(path)
    env = yaml.safe_load(p.read_text()) or {}
    wd = env.get("working_dir")
    if isinstance(wd, str) and "://" not in wd and not os.path.isabs(wd):
        env["working_dir"] = str((p.resolve().parent.parent / wd).resolve())
    if storage_root:
        env.setdefault("env_vars", {})[STORAGE_ROOT_ENV] = storage_root
    return env


def members(overrides: list[str]) -> list[list[str]]:
    """Each member of a multirun command (Hydra's basic sweeper: the product of the swept values);
    one member, the overrides as given, without sweeps. Hydra flags are dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = [o for o in overrides if o not in HYDRA_FLAGS]
    parsed = OverridesParser.create().parse_overrides(plain)
    choices = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception as e:  # noqa: BLE001 - e.g. glob(): Hydra expands those on the head
            raise SubmitError(f"cannot expand the sweep {o.input_line!r} here ({e}); pass --no-check to "
                              "submit without checking its members") from None
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    return [list(c) for c in itertools.product(*choices)]


def compose(overrides: list[str]):
    """The RunConfig the job's Hydra builds from ``cluster=gpu <overrides>`` (single member)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lingua_ray.config import RunConfig, register_configs, to_run_config

    register_configs()
    full = [CLUSTER_DEFAULT, *overrides]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app over conf/ (workflows/follow.py)
        cfg = hydra_compose("config", overrides=full)
    else:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = hydra_compose("config", overrides=full)
    # The follow app's schema adds `follow` to the root; the job's pipeline has none.
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return to_run_config(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k in fields]))


def check(overrides: list[str], storage_root: str | None) -> list[Any]:
    """Every member composed and checked as the job will see it; raises SubmitError naming the
    member. Returns the members' RunConfigs with durable paths."""
    from lingua_ray.config import validate

    old = os.environ.get(STORAGE_ROOT_ENV)
    if storage_root:
        os.environ[STORAGE_ROOT_ENV] = storage_root  # what the job's ${oc.env:...} will read
    try:
        out = []
        ms = members(overrides)
        for m in ms:
            try:
                out.append(durable(validate(compose(m)), joining=True))
            except Exception as e:  # noqa: BLE001 - one line naming the member
                which = f" (member {' '.join(m)})" if len(ms) > 1 else ""
                raise SubmitError(f"refused{which}: {e}") from None
        return out
    finally:
        if storage_root:
            if old is None:
                os.environ.pop(STORAGE_ROOT_ENV, None)
            else:
                os.environ[STORAGE_ROOT_ENV] = old


def job_client(address: str | None):
    """A JobSubmissionClient for ``address`` (default RAY_ADDRESS, then localhost:8265); a refused
    token or an unreachable server is a one-line SubmitError."""
    from ray.job_submission import JobSubmissionClient

    try:
        from ray.exceptions import AuthenticationError  # Ray >= 2.5x: token auth
    except ImportError:  # an older Ray has no token auth to be refused by
        class AuthenticationError(Exception):  # type: ignore[no-redef]
            pass

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        mode = os.environ.get("RAY_AUTH_MODE")
        hint = ("export RAY_AUTH_MODE=token so the client sends the head's token" if mode != "token" else
                "the token sent does not match the head's")
        raise SubmitError(f"the job server at {address} refused the request ({str(e).splitlines()[0]}): {hint}; "
                          "the token comes from RAY_AUTH_TOKEN, the file in RAY_AUTH_TOKEN_PATH or "
                          "~/.ray/auth_token (copy the head's ~/.ray/auth_token)") from None
    except ConnectionError as e:
        raise SubmitError(f"no job server at {address} ({e}); set RAY_ADDRESS (e.g. the port-forward of "
                          "`ray dashboard cluster/ray-cluster.yaml`, http://127.0.0.1:8265)") from None


def wait_for(client, job_id: str, printer: Callable = print, poll_s: float = 1.0) -> str:
    """Stream the job's log until it ends; its final status ("SUCCEEDED", "FAILED", "STOPPED")."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            printer(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as e:  # noqa: BLE001 - the log is a convenience; the status decides
        printer(f"[submit] log stream of {job_id} ended early ({type(e).__name__}); polling its status", flush=True)
    while True:
        got = client.get_job_status(job_id)
        status = str(getattr(got, "value", got))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def submit(opts: Options, client=None, printer: Callable = print) -> tuple[str, str | None]:
    """Check (unless ``opts.check`` is off), submit and, with ``opts.wait``, wait.

    Returns (submission id, final status or None when not waiting). Raises SubmitError when
    refused before submitting.
    """
    root = opts.storage_root or os.environ.get(STORAGE_ROOT_ENV)
    if opts.check:
        check(opts.overrides, root)
    client = client or job_client(opts.address)
    job_id = client.submit_job(entrypoint=entrypoint(opts.overrides, opts.entry),
                               runtime_env=runtime_env(opts.runtime_env, root),
                               submission_id=opts.submission_id, metadata=opts.metadata or None)
    printer(f"[submit] job {job_id} submitted: {entrypoint(opts.overrides, opts.entry)}", flush=True)
    if not opts.wait:
        printer(f"[submit] follow it with: ray job logs --follow {job_id}", flush=True)
        return job_id, None
    status = wait_for(client, job_id, printer)
    printer(f"[submit] job {job_id} {status}", flush=True)
    return job_id, status


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        _, status = submit(opts)
    except SubmitError as e:
        print(f"submit: {e}", file=sys.stderr, flush=True)
        return 2
    return 0 if status in (None, "SUCCEEDED") else 1


if __name__ == "__main__":
    sys.exit(main())
