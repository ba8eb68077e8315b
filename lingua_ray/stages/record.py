"""Record: create or extend the store for this run's grid and record every missing cell.

Flow: fingerprint the checkpoints → the grid spec → create/extend the store (refusing a store
that differs) → missing work units → recorder actors write whole blocks → run statistics.

On a GPU the actors write asynchronously (``ModelWorker.record(asynchronous=True)``: a writer
thread with a bounded queue, so the device never waits on Zarr). A unit then counts as done only
when its block's markers are in the store: after the pass every actor is flushed, and blocks a
dead actor had queued but not written are found by ``missing_blocks`` and recorded again,
synchronously. On a CPU the capture and the write share the same cores, so writes stay synchronous.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

from lingua_ray import atomic, schedule
from lingua_ray.config import RunConfig, resolved
from lingua_ray.lease import StoreLease
from lingua_ray.stages.inputs import corpora, store_identity, store_path
from lingua_ray.store import ActivationStore, GridSpec


@dataclass
class RecordResult:
    """What one invocation of the record stage did. seconds: wall time of the recording itself."""

    units_total: int = 0
    units_skipped: int = 0
    units_recorded: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    tokens_per_s: float | None = None
    store_bytes: int = 0
    write_bytes: int = 0  # bytes of recorded statistics written to the store (n_tokens included)
    write_seconds: float = 0.0  # time spent in store writes (in the writer threads when asynchronous)
    write_MBps: float | None = None
    asynchronous_writes: bool = False
    rerecorded_after_flush: int = 0  # blocks queued by an actor that died before writing them
    finished_utc: str = ""


def grid_spec(cfg: RunConfig) -> GridSpec:
    """The grid this run wants in the store: checkpoints with fingerprints, languages, texts."""
    from lingua_ray.models.loading import model_fingerprint

    selection, _ = corpora(cfg)
    ckpts = []
    for ck in cfg.model.checkpoints:
        fp = model_fingerprint(cfg.model, ck)
        ckpts.append({"label": ck.label, "revision": ck.revision, "step": ck.step, "fingerprint": fp})
    shapes = {(c["fingerprint"]["n_layers"], c["fingerprint"]["n_neurons"]) for c in ckpts}
    if len(shapes) != 1:
        raise ValueError(f"checkpoints of one store must share (layers, neurons); got {sorted(shapes)}. "
                         "Use one run per model size (e.g. a Hydra multirun over model=...).")
    (L, F), = shapes
    return GridSpec(
        checkpoints=ckpts, languages=list(selection.languages), unit_ids=list(selection.unit_ids),
        texts={lang: list(selection.texts(lang)) for lang in selection.languages},
        n_layers=L, n_neurons=F, statistics=[getattr(s, "value", s) for s in cfg.capture.statistics],
        identity=store_identity(cfg), config=resolved(cfg),
    )


def run(cfg: RunConfig, asynchronous: bool | None = None) -> RecordResult:
    """asynchronous: store writes on the actors' writer threads; None = on a GPU only (module doc)."""
    path = store_path(cfg)
    spec = grid_spec(cfg)
    # One writer per store: creation, growth and recording all happen under the lease.
    with StoreLease(path, run=cfg.run.name, ttl_s=cfg.store.lease_ttl_s):
        return _run(cfg, path, spec, asynchronous)


def _run(cfg: RunConfig, path: str, spec: GridSpec, asynchronous: bool | None = None) -> RecordResult:
    store = ActivationStore.create_or_extend(path, spec, cfg.store.unit_block, cfg.store.dtype)
    missing = list(store.missing_blocks(verify=cfg.store.verify_on_resume))
    for block in missing:  # a damaged block is re-recorded from scratch: its old markers go first
        store.invalidate_block(*block)
    C, K, S = store.shape[:3]
    out = RecordResult(units_total=C * K * S)
    units = [schedule.WorkUnit(ck, (lang, s0, s1)) for ck, lang, s0, s1 in missing]
    n_cells = sum(s1 - s0 for _, _, s0, s1 in missing)
    out.units_skipped = out.units_total - n_cells
    if not units:
        print(f"[record] all {out.units_total} cells already in the store; nothing to do", flush=True)
    else:
        out.asynchronous_writes = cfg.cluster.gpus_per_actor > 0 if asynchronous is None else asynchronous
        _record(cfg, path, units, n_cells, out)
        if out.asynchronous_writes:
            wanted = {(u.checkpoint, *u.key) for u in units}
            lost = [b for b in store.missing_blocks() if b in wanted]
            if lost:  # queued by an actor that died before its writer thread wrote them
                print(f"[record] {len(lost)} block(s) were queued but not written; recording them again",
                      flush=True)
                out.rerecorded_after_flush = len(lost)
                # The first pass counted these blocks when they were queued; this pass writes them, so
                # units and tokens stay counted once. Only its time and write volume add up.
                sync = RecordResult(asynchronous_writes=False)
                _record(cfg, path, [schedule.WorkUnit(ck, (lang, s0, s1)) for ck, lang, s0, s1 in lost],
                        sum(s1 - s0 for *_, s0, s1 in lost), sync)
                out.write_bytes += sync.write_bytes
                out.write_seconds += sync.write_seconds
                out.seconds += sync.seconds
        out.write_MBps = out.write_bytes / 2**20 / out.write_seconds if out.write_seconds > 0 else None
    store.consolidate()
    out.store_bytes = _du(path)
    out.finished_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # One entry per invocation: a resume must not overwrite the first run's throughput numbers.
    hist_path = Path(cfg.run.out_dir) / "record_stats.json"
    history = json.loads(hist_path.read_text()) if hist_path.exists() else []
    atomic.write_json(hist_path, (history if isinstance(history, list) else [history]) + [dataclasses.asdict(out)])
    return out


def _record(cfg: RunConfig, path: str, units: list, n_cells: int, out: RecordResult) -> None:
    from lingua_ray.worker import ModelWorker

    schedule.init_ray(cfg.cluster)
    n_ck = len({u.checkpoint for u in units})
    progress = schedule.Progress(n_cells, "record")
    args = (cfg.model, cfg.model.checkpoints, cfg.cluster.gpus_per_actor)
    with schedule.actor_pool(ModelWorker, args, min(cfg.cluster.num_actors, len(units)), cfg.cluster) as actors:
        print(f"[record] {len(units)} work units over {n_ck} checkpoint(s) on {len(actors)} actor(s); "
              f"{out.units_skipped} cells already done", flush=True)

        def submit(actor, u):
            return actor.record.remote(path, cfg.capture, u.checkpoint, *u.key, asynchronous=out.asynchronous_writes)

        def add_writes(r):
            out.write_bytes += r.get("write_bytes", 0)
            out.write_seconds += r.get("write_seconds", 0.0)

        def on_done(u, r):
            out.units_recorded += r["units"]
            out.tokens += r["tokens"]
            out.truncated += r["truncated"]
            add_writes(r)
            progress.update(r["units"], r["tokens"])

        try:
            schedule.run_units(units, actors, submit, on_done, what="record")
            if out.asynchronous_writes:  # every queued block written (or its failure raised) before the pool goes
                for r in schedule.gather([a.flush.remote() for a in actors], what="record: flushing store writes"):
                    add_writes(r)
        finally:
            out.seconds = progress.seconds
            out.tokens_per_s = out.tokens / max(out.seconds, 1e-9)


def _du(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
