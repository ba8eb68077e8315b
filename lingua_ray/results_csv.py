"""The flat CSV tables cut from a results.json dict (docs/results.md, "CSV tables").

Comma-separated, header row, ``\\n`` line ends, null as an empty cell, floats in Python's
shortest round-trip repr. Pure: builds text, writes nothing (results.write_results writes).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from lingua_ray.specificity import SPECIFICITY_FIELDS

CSV_FILES = ("scores_overall.csv", "scores_per_layer.csv", "key_neuron_counts.csv")
ABLATION_CSV_FILES = ("ablation_ppl.csv", "ablation_specificity.csv")


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def csv_tables(d: dict) -> dict[str, str]:
    """The CSV tables of a validated, normalised results dict: file name -> text (nulls empty).

    Always the three CSV_FILES; the two ABLATION_CSV_FILES too when ``d["ablation"]`` is not None.
    """
    overall, layers, counts = [], [], []
    for cp in d["checkpoints"]:
        lab, step = cp["label"], cp["step"]
        for part, definition in (("overall", "paper"), ("overall_balanced", "balanced")):
            for m in ("lrds", "sads"):
                st = cp[part][m]
                lo, hi = st["ci"] if st["ci"] is not None else (None, None)
                overall.append([lab, step, m, definition, st["value"], lo, hi, st["p_value"]])
        pl = cp["per_layer"]
        for i, share in enumerate(pl["norm_share"]):
            row = [lab, step, i]
            for m in ("lrds", "sads"):
                st = pl[m][i]
                row += [st["value"], *(st["ci"] if st["ci"] is not None else (None, None))]
            layers.append(row + [share])
        for lang, per_layer in cp["key_neurons"]["counts"].items():
            counts += [[lab, lang, i, c] for i, c in enumerate(per_layer)]
    out = {
        "scores_overall.csv": _csv(["checkpoint", "step", "metric", "definition", "value", "ci_lo", "ci_hi", "p_value"], overall),
        "scores_per_layer.csv": _csv(["checkpoint", "step", "layer", "lrds", "lrds_lo", "lrds_hi",
                                     "sads", "sads_lo", "sads_hi", "norm_share"], layers),
        "key_neuron_counts.csv": _csv(["checkpoint", "language", "layer", "count"], counts),
    }
    if d["ablation"] is not None:
        ppl, spec = [], []
        fields = list(SPECIFICITY_FIELDS)
        for cp in d["ablation"]["checkpoints"]:
            for r in cp["rows"]:
                ppl += [[cp["label"], r["mask"], r["language"], r["repeat"], r["n_neurons"], e, r["ppl"][e],
                         r["log_ppl_ratio"][e]] for e in cp["eval_languages"]]
            spec += [[cp["label"], lang] + [s[k] for k in fields] for lang, s in cp["specificity"].items()]
        out["ablation_ppl.csv"] = _csv(["checkpoint", "mask", "language", "repeat", "n_neurons", "eval_language",
                                        "ppl", "log_ppl_ratio"], ppl)
        out["ablation_specificity.csv"] = _csv(["checkpoint", "language"] + fields, spec)
    return out
