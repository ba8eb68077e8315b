"""Print a run's "criteria side by side" numbers as Markdown tables (the report's section, as text).

    python workflows/criteria_table.py RUN_DIR_OR_RESULTS_JSON

Set sizes per language, pairwise Jaccard, ablation specificity per criterion against its random
control, alignment per layer beside LRDS and SADS — for the last checkpoint. Errors print as one line.
"""

from __future__ import annotations

import sys

from lingua_ray.entry import one_line_errors
from lingua_ray.report_criteria import criteria_markdown
from lingua_ray.results import load_results


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    text = one_line_errors(lambda: criteria_markdown(load_results(argv[0])), prefix="criteria_table", hint=False)
    print(text or "no criteria or alignment sections in this results.json (run the reduce stage)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
