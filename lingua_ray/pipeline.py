"""The stages in order: record → reduce → ablate → report. Each resumes; each can run alone.

Validation comes first: a config that cannot work is refused before Ray starts, a model loads
or any file is written (config.resolved.json included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lingua_ray import atomic
from lingua_ray.config import ConfigError, RunConfig, Stage, resolved, validate
from lingua_ray.stages import ablate, record, reduce, report
from lingua_ray.stages.inputs import corpora, store_path
from lingua_ray.storage import durable


@dataclass
class PipelineResult:
    record: record.RecordResult | None = None
    reduce: dict | None = None  # results.json content after reduce
    ablate: dict | None = None  # ... and after ablate
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Any:
        return getattr(self, stage)


def preflight(cfg: RunConfig, wanted: set[Stage]) -> None:
    """Everything checkable before Ray starts or a model loads: the config's own rules, then the
    inputs it names (checkpoint folders / hub revisions, the corpus and its held-out split)."""
    validate(cfg)
    if wanted & {Stage.record, Stage.ablate}:
        from lingua_ray.models.loading import check_checkpoints

        check_checkpoints(cfg.model)
    if Stage.record in wanted:
        corpora(cfg)  # loads the corpus: bad files and too small a split fail here, file:line named
    check_store_grid(cfg)


def check_store_grid(cfg: RunConfig) -> None:
    """An existing store may grow by the languages a config adds, but results cover the store's
    whole grid: a store holding a language this config does not name (another sweep member's, a
    shared ``store.path``) would give results whose grid is not the config's. Refused up front."""
    from lingua_ray.store import ActivationStore, StoreError

    path = store_path(cfg)
    try:
        store = ActivationStore(path)
    except StoreError:
        return  # no store yet (or not one of ours: record says so when it gets there)
    extra = [lang for lang in store.languages if lang not in cfg.corpus.languages]
    if extra:
        raise ConfigError(
            f"store {path!r} holds languages {extra} that corpus.languages={list(cfg.corpus.languages)} does not "
            f"name, so this run's results would cover {list(store.languages) + [x for x in cfg.corpus.languages if x not in store.languages]}: "
            "give this run its own store (store.path, or a run.name of its own), or add those languages to "
            "corpus.languages")


def run(cfg: RunConfig, stages: Sequence[Stage | str] | None = None) -> PipelineResult:
    """Run ``stages`` (default ``cfg.stages``) in pipeline order; nothing is written until the
    preflight passed, so a refused run changes nothing."""
    wanted = {Stage(s) for s in (cfg.stages if stages is None else stages)}
    cfg = durable(cfg)  # relative outputs under the storage root; refused when they would be lost
    preflight(cfg, wanted)
    out = PipelineResult()
    out_dir = Path(cfg.run.out_dir)
    atomic.write_json(out_dir / "config.resolved.json", resolved(cfg))

    def timed(stage: Stage, fn) -> Any:
        t0 = time.perf_counter()
        value = fn(cfg)
        out.timings[stage.value] = round(time.perf_counter() - t0, 1)
        print(f"[{stage.value}] done in {out.timings[stage.value]:.1f}s", flush=True)
        return value

    if Stage.record in wanted:
        out.record = timed(Stage.record, record.run)
    if Stage.reduce in wanted:
        out.reduce = timed(Stage.reduce, reduce.run)
    if Stage.ablate in wanted and cfg.ablation.enabled:
        out.ablate = timed(Stage.ablate, ablate.run)
    if Stage.report in wanted:
        out.report = timed(Stage.report, report.run)
    atomic.write_json(out_dir / "timings.json", out.timings)
    if out.report is not None:
        print(f"report: {out.report}", flush=True)
    return out
