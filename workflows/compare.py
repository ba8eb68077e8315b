"""Compare several runs (model sizes, families) in one report, from their results.json files.

    python workflows/compare.py RESULTS [RESULTS ...] [--out compare.html] [--names a,b,c]

Each RESULTS is a results.json or the run folder holding it (``run.out_dir``). The page
(lingua_ray/report_compare.py) shows the headline scores across steps, per-layer scores against
relative depth, the share of key neurons at both ends and the key-set overlap, one line per run.
Errors print as one line and exit 1; LINGUA_RAY_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from lingua_ray.entry import one_line_errors
from lingua_ray.report_compare import write_comparison


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files or the run folders holding them")
    ap.add_argument("--out", default="compare.html", help="the HTML file to write (a folder gets compare.html)")
    ap.add_argument("--names", default=None, help="comma-separated run names, one per RESULTS (default: run.name)")
    a = ap.parse_args(argv)
    names = None if a.names is None else [n.strip() for n in a.names.split(",")]
    path = one_line_errors(lambda: write_comparison(a.results, a.out, names), prefix="compare", hint=False)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
