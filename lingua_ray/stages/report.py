"""Report: the self-contained HTML from results.json (report.py draws; this stage finds the inputs)."""

from __future__ import annotations

from pathlib import Path

from lingua_ray.config import RunConfig
from lingua_ray.report import write_report
from lingua_ray.results import load_results


def run(cfg: RunConfig) -> Path:
    out_dir = Path(cfg.run.out_dir)
    return write_report(load_results(out_dir / "results.json"), out_dir / "report.html")
