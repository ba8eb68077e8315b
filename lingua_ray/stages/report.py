"""Report: the self-contained HTML from results.json (report.py draws; this stage finds the inputs)."""

from __future__ import annotations

from pathlib import Path

from lingua_ray.config import RunConfig
from lingua_ray.report import write_report
from lingua_ray.results import load_results
from lingua_ray.stages.inputs import check_results_current, store_path


def run(cfg: RunConfig) -> Path:
    """report.html from results.json, refused when results.json is not this store's and config's
    (``check_results_current``: a report never presents stale numbers as current)."""
    from lingua_ray.store import ActivationStore, StoreError

    out_dir = Path(cfg.run.out_dir)
    results = load_results(out_dir / "results.json")
    try:
        store = ActivationStore(store_path(cfg))
    except StoreError:
        store = None  # results.json without its store (copied elsewhere): the config check alone
    check_results_current(cfg, results, out_dir / "results.json", store)
    return write_report(results, out_dir / "report.html")
