"""Record: create or extend the store for this run's grid and record every missing cell.

Flow: fingerprint the checkpoints → the grid spec → create/extend the store (refusing a store
that differs) → missing work units → recorder actors write whole blocks → run statistics.
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


def run(cfg: RunConfig) -> RecordResult:
    path = store_path(cfg)
    spec = grid_spec(cfg)
    # One writer per store: creation, growth and recording all happen under the lease.
    with StoreLease(path, run=cfg.run.name, ttl_s=cfg.store.lease_ttl_s):
        return _run(cfg, path, spec)


def _run(cfg: RunConfig, path: str, spec: GridSpec) -> RecordResult:
    store = ActivationStore.create_or_extend(path, spec, cfg.store.unit_block)
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
        _record(cfg, path, units, n_cells, out)
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
            return actor.record.remote(path, cfg.capture, u.checkpoint, *u.key)

        def on_done(u, r):
            out.units_recorded += r["units"]
            out.tokens += r["tokens"]
            out.truncated += r["truncated"]
            progress.update(r["units"], r["tokens"])

        try:
            schedule.run_units(units, actors, submit, on_done, what="record")
        finally:
            out.seconds = progress.seconds
            out.tokens_per_s = out.tokens / max(out.seconds, 1e-9)


def _du(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
