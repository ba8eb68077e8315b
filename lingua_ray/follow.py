"""Follow a training run: find the checkpoints not yet analysed and run the pipeline for those only.

One cron tick is ``python workflows/follow.py follow.watch=<folder> [pipeline overrides...]``:

1. Discover checkpoints: every subfolder of ``follow.watch`` holding a model (config.json and a
   weight file, untouched for ``follow.min_age_s``) is one, labelled by its name, its step the
   name's trailing number (``ckpt-1200`` → 1200); and/or ``follow.hub_refs=<glob>``: the branches
   and tags of ``model.hf_id`` matching it (from the local HF cache when HF_HUB_OFFLINE=1).
2. A checkpoint is done when the sweep's store has all its cells and results.json (and its
   ablation section and report.html, when those stages run) include it. Nothing pending: exit 0,
   nothing read beyond the store's markers and results.json, nothing written.
3. Otherwise run the pipeline with every discovered checkpoint (the store records only the new
   ones; reduce, ablate and report then cover the whole trajectory):
   - without RAY_ADDRESS, in this process;
   - with it, as a Ray job whose submission id is derived from the store and the new checkpoint
     set (``submission_id``). A job under that id that is running or succeeded makes the tick a
     no-op (exit 0), as does any running follow job on the same store; a failed or stopped one is
     retried under ``<id>-retry<n>``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lingua_ray.config import CheckpointConfig, FollowConfig, ModelSource, RunConfig, Stage

META_STORE = "lingua_ray_follow_store"
META_CHECKPOINTS = "lingua_ray_follow_checkpoints"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")  # as lingua_ray.models.weights, without importing it
_TRAILING_INT = re.compile(r"(\d+)$")


class FollowError(ValueError):
    """A follow tick that cannot work; the message names the key and what to do."""


@dataclass
class FollowRunConfig(RunConfig):
    """The pipeline's RunConfig plus ``follow``: the schema of workflows/follow.py."""

    follow: FollowConfig = field(default_factory=FollowConfig)


def register_follow_schema() -> None:
    """Make conf/config.yaml's ``run_schema`` the FollowRunConfig (for workflows/follow.py only),
    so ``follow.*`` keys are typed and checked like every other key."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=FollowRunConfig)


def split_config(cfg: Any) -> tuple[FollowConfig, RunConfig]:
    """(FollowConfig, RunConfig) from the follow app's DictConfig."""
    from omegaconf import OmegaConf

    from lingua_ray.config import to_run_config

    follow = FollowConfig(**OmegaConf.to_container(cfg.follow, resolve=True))
    rest = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "follow"])
    return follow, to_run_config(rest)


# ------------------------------------------------------------------------------- discovery


def step_of(name: str) -> int | None:
    """The trailing number of a checkpoint name (``step1200``, ``ckpt-1200``, ``global_step1200``)."""
    m = _TRAILING_INT.search(name)
    return int(m.group(1)) if m else None


def _ordered(ckpts: list[CheckpointConfig]) -> list[CheckpointConfig]:
    return sorted(ckpts, key=lambda c: (c.step is None, c.step or 0, c.label))


def watch_checkpoints(folder: str, min_age_s: float = 0.0, now: float | None = None,
                      printer: Callable = print) -> list[CheckpointConfig]:
    """Every model subfolder of ``folder`` (config.json + a weight file), ordered by step."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FollowError(f"follow.watch={folder!r} is not a folder; point it at the folder the trainer saves "
                          "checkpoints into")
    now = time.time() if now is None else now
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [p for p in sub.iterdir() if p.is_file()]
        if not (sub / "config.json").is_file() or not any(p.suffix in WEIGHT_SUFFIXES for p in files):
            continue
        age = now - max(p.stat().st_mtime for p in files)
        if age < min_age_s:
            printer(f"[follow] {sub.name}: written {age:.0f}s ago (< follow.min_age_s={min_age_s:g}); "
                    "next tick", flush=True)
            continue
        out.append(CheckpointConfig(label=sub.name, path=str(sub.resolve()), step=step_of(sub.name)))
    return _ordered(out)


def _cached_ref_names(repo_id: str) -> list[str]:
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs"
    return sorted(p.name for p in refs.iterdir() if p.is_file()) if refs.is_dir() else []


def hub_ref_names(repo_id: str) -> list[str]:
    """Branches and tags of a hub repo: from the hub, or from the local HF cache when offline."""
    from lingua_ray.models.loading import hub_offline

    if hub_offline():
        return _cached_ref_names(repo_id)
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs(repo_id)
    return sorted({r.name for r in [*refs.branches, *refs.tags]})


def hub_checkpoints(repo_id: str, pattern: str) -> list[CheckpointConfig]:
    """The refs of ``repo_id`` matching the glob ``pattern``, labelled by their names, by step."""
    names = [n for n in hub_ref_names(repo_id) if fnmatch.fnmatchcase(n, pattern)]
    return _ordered([CheckpointConfig(label=n, revision=n, step=step_of(n)) for n in names])


def discover(cfg: RunConfig, fc: FollowConfig, printer: Callable = print) -> list[CheckpointConfig]:
    """Every checkpoint ``fc`` points at; duplicate labels are refused."""
    if not fc.watch and not fc.hub_refs:
        raise FollowError("nothing to follow: give follow.watch=<folder of checkpoints> and/or "
                          "follow.hub_refs=<glob over model.hf_id's branches and tags>")
    found: list[CheckpointConfig] = []
    if fc.watch:
        found += watch_checkpoints(fc.watch, fc.min_age_s, printer=printer)
    if fc.hub_refs:
        if ModelSource(cfg.model.source) is not ModelSource.hub or not cfg.model.hf_id:
            raise FollowError(f"follow.hub_refs needs model.source=hub and model.hf_id; this model has "
                              f"source={ModelSource(cfg.model.source).value}, hf_id={cfg.model.hf_id!r}")
        found += hub_checkpoints(cfg.model.hf_id, fc.hub_refs)
    labels = [c.label for c in found]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise FollowError(f"checkpoint label(s) {dup} found twice (follow.watch and follow.hub_refs); rename one")
    return found


# ------------------------------------------------------------------------------- what is done


def store_path(cfg: RunConfig) -> str:
    """As lingua_ray.stages.inputs.store_path (not imported: it loads the corpus package)."""
    return cfg.store.path or str(Path(cfg.run.out_dir) / "activations.zarr")


def finished(cfg: RunConfig) -> tuple[set[str], list[str]]:
    """(labels whose every stage output is there, every label the store holds).

    Recorded: all of the config's languages are in the store and every cell of the checkpoint
    is marked. Reduced: in results.json's grid. Ablated / reported when those stages run.
    """
    from lingua_ray.store import ActivationStore, StoreError

    try:
        store = ActivationStore(store_path(cfg))
    except StoreError:
        return set(), []
    held = store.checkpoints
    langs = list(cfg.corpus.languages)
    if not set(langs) <= set(store.languages):
        return set(), held
    done = store.done()
    ks = [store.languages.index(lang) for lang in langs]
    ok = {ck for ck in held if done[store.checkpoint_info(ck).index][ks].all()}
    stages = {Stage(s) for s in cfg.stages}
    out = Path(cfg.run.out_dir)
    if stages & {Stage.reduce, Stage.ablate, Stage.report}:
        try:
            results = json.loads((out / "results.json").read_text())
        except (OSError, ValueError):
            return set(), held
        ok &= {c["label"] for c in results.get("grid", {}).get("checkpoints", [])}
        if Stage.ablate in stages and cfg.ablation.enabled:
            ok &= {c["label"] for c in (results.get("ablation") or {}).get("checkpoints", [])}
        if Stage.report in stages:
            report = out / "report.html"
            if not report.exists() or report.stat().st_mtime < (out / "results.json").stat().st_mtime:
                ok = set()
    return ok, held


@dataclass
class Plan:
    """What one tick found: every checkpoint (ordered), the labels to compute, the store."""

    checkpoints: list[CheckpointConfig]
    new: list[str]
    store: str


def plan(cfg: RunConfig, fc: FollowConfig, printer: Callable = print) -> Plan:
    found = discover(cfg, fc, printer)
    done, held = finished(cfg)
    labels = {c.label for c in found}
    new = [c.label for c in found if c.label not in done]
    gone = [label for label in held if label not in labels]
    if new and gone:
        raise FollowError(f"store {store_path(cfg)!r} holds checkpoint(s) {gone} that follow no longer finds; "
                          "restore their folders (the ablation reloads them) or follow into a new store")
    return Plan(found, new, store_path(cfg))


# ------------------------------------------------------------------------------- running


_PLAIN = re.compile(r"(?:[A-Za-z_]|/)[A-Za-z0-9_./+-]*")  # Hydra reads these unquoted as the same string


def _quote(value: str, what: str) -> str:
    """``value`` as a Hydra override value: plain when that reads back as the same string, else quoted."""
    if "'" in value or "\\" in value or "${" in value:
        raise FollowError(f"{what} {value!r} contains a quote, a backslash or '${{'; rename it")
    if _PLAIN.fullmatch(value) and value.lower() not in ("true", "false", "null", "none", "nan", "inf"):
        return value
    return f"'{value}'"


def checkpoints_override(ckpts: list[CheckpointConfig]) -> str:
    """``model.checkpoints=[{label:'a',path:'/x',step:1},...]``: one Hydra override, values quoted."""
    items = []
    for c in ckpts:
        parts = [f"label:{_quote(c.label, 'checkpoint label')}"]
        if c.path:
            parts.append(f"path:{_quote(c.path, 'checkpoint path')}")
        if c.revision:
            parts.append(f"revision:{_quote(c.revision, 'checkpoint revision')}")
        if c.step is not None:
            parts.append(f"step:{int(c.step)}")
        items.append("{" + ",".join(parts) + "}")
    return "model.checkpoints=[" + ",".join(items) + "]"


def submission_id(cfg: RunConfig, new: list[CheckpointConfig]) -> str:
    """``lingua-ray-follow-<run name>-<12 hex>``: the same store and new set always give the same id."""
    key = {"store": store_path(cfg),
           "new": sorted([c.label, c.path or "", c.revision or ""] for c in new)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.run.name).strip("-")[:40] or "run"
    return f"lingua-ray-follow-{slug}-{digest}"


def job_overrides(cfg: RunConfig, overrides: list[str], ckpts: list[CheckpointConfig]) -> list[str]:
    """The pipeline job's overrides: the tick's own (without follow.* and model.checkpoints), the
    run's resolved name and folder pinned (so the job writes where this tick looked), and every
    checkpoint."""
    drop = ("follow.", "+follow.", "model.checkpoints=", "run.name=", "run.out_dir=")
    keep = [o for o in overrides if not o.startswith(drop)]
    return [*keep, f"run.name={_quote(cfg.run.name, 'run.name')}",
            f"run.out_dir={_quote(cfg.run.out_dir, 'run.out_dir')}", checkpoints_override(ckpts)]


def _status(job: Any) -> str:
    s = job.status
    return str(getattr(s, "value", s))


def run_job(cfg: RunConfig, fc: FollowConfig, p: Plan, overrides: list[str], address: str,
            client: Any = None, printer: Callable = print) -> int:
    """Submit the pipeline for ``p`` once per new checkpoint set (see the module docstring)."""
    from lingua_ray.submit import Options, job_client, submit

    new = [c for c in p.checkpoints if c.label in p.new]
    base = submission_id(cfg, new)
    client = client or job_client(address)
    jobs = {j.submission_id: j for j in client.list_jobs()}
    for j in jobs.values():
        if (j.metadata or {}).get(META_STORE) == p.store and _status(j) in ("PENDING", "RUNNING"):
            printer(f"[follow] job {j.submission_id} on {p.store} is still {_status(j).lower()}; "
                    "nothing submitted (the next tick picks up what it leaves)", flush=True)
            return 0
    for attempt in itertools.count():
        sid = base if attempt == 0 else f"{base}-retry{attempt}"
        job = jobs.get(sid)
        if job is None:
            break
        if _status(job) == "SUCCEEDED":
            printer(f"[follow] job {sid} already succeeded for {', '.join(p.new)}; nothing to do (if they still "
                    f"look new, that job wrote elsewhere than {p.store})", flush=True)
            return 0
        if _status(job) in ("PENDING", "RUNNING"):
            printer(f"[follow] job {sid} is {_status(job).lower()}; nothing submitted", flush=True)
            return 0
        printer(f"[follow] job {sid} {_status(job).lower()}; retrying", flush=True)
    printer(f"[follow] {len(new)} new checkpoint(s) {', '.join(p.new)}: submitting job {sid}", flush=True)
    opts = Options(overrides=job_overrides(cfg, overrides, p.checkpoints), address=address, submission_id=sid,
                   wait=fc.wait, metadata={META_STORE: p.store, META_CHECKPOINTS: ",".join(p.new)})
    try:
        _, status = submit(opts, client=client, printer=printer)
    except RuntimeError as e:
        if sid in {j.submission_id for j in client.list_jobs()}:  # another tick submitted it first
            printer(f"[follow] job {sid} was submitted meanwhile; nothing to do", flush=True)
            return 0
        raise e
    return 0 if status in (None, "SUCCEEDED") else 1


def tick(cfg: RunConfig, fc: FollowConfig, overrides: list[str], address: str | None = None,
         client: Any = None, printer: Callable = print) -> int:
    """One follow tick; the process's exit status (0: done or nothing to do)."""
    from lingua_ray.storage import durable

    cfg = durable(cfg, joining=bool(address) or None)
    p = plan(cfg, fc, printer)
    if not p.new:
        printer(f"[follow] nothing new: all {len(p.checkpoints)} checkpoint(s) are done in {p.store}", flush=True)
        return 0
    if address:
        return run_job(cfg, fc, p, overrides, address, client, printer)
    printer(f"[follow] {len(p.new)} new checkpoint(s) {', '.join(p.new)}: running the pipeline here", flush=True)
    from lingua_ray import pipeline

    pipeline.run(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoints=p.checkpoints)))
    return 0


__all__ = ["FollowConfig", "FollowError", "FollowRunConfig", "Plan", "checkpoints_override", "discover",
           "finished", "hub_checkpoints", "job_overrides", "plan", "register_follow_schema", "run_job",
           "split_config", "step_of", "submission_id", "tick", "watch_checkpoints"]
