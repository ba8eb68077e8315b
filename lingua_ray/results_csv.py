"""The flat CSV tables cut from a results.json dict (docs/results.md, "CSV tables").

Comma-separated, header row, ``\\n`` line ends, null as an empty cell, floats in Python's
shortest round-trip repr. Pure: builds text, writes nothing (results.write_results writes).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from lingua_ray.alignment import METRICS as ALIGNMENT_METRICS
from lingua_ray.specificity import SPECIFICITY_FIELDS

CSV_FILES = ("scores_overall.csv", "scores_per_layer.csv", "key_neuron_counts.csv")
ABLATION_CSV_FILES = ("ablation_ppl.csv", "ablation_specificity.csv")
CRITERIA_CSV_FILES = ("criteria_counts.csv", "criteria_overlap.csv")
CRITERIA_ABLATION_CSV_FILES = ("criteria_specificity.csv",)
ALIGNMENT_CSV_FILES = ("alignment.csv",)
# Written only when their section is in the results; write_results deletes stale ones.
OPTIONAL_CSV_FILES = ABLATION_CSV_FILES + CRITERIA_CSV_FILES + CRITERIA_ABLATION_CSV_FILES + ALIGNMENT_CSV_FILES


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def csv_tables(d: dict) -> dict[str, str]:
    """The CSV tables of a validated, normalised results dict: file name -> text (nulls empty).

    Always the three CSV_FILES; the two ABLATION_CSV_FILES too when ``d["ablation"]`` is not None,
    CRITERIA_CSV_FILES with ``d["criteria"]`` (CRITERIA_ABLATION_CSV_FILES once it holds ablations)
    and ALIGNMENT_CSV_FILES with ``d["alignment"]``.
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
    if d.get("criteria") is not None:
        out.update(_criteria_tables(d["criteria"]))
    if d.get("alignment") is not None:
        out.update(_alignment_tables(d["alignment"]))
    return out


def _criteria_tables(cr: dict) -> dict[str, str]:
    """criteria_counts.csv, criteria_overlap.csv and (after ablate) criteria_specificity.csv."""
    names = cr["names"]
    counts, overlap = [], []
    for cp in cr["checkpoints"]:
        lab = cp["label"]
        for name in names:
            for lang, per_layer in cp["criteria"][name]["counts"].items():
                counts += [[lab, name, lang, i, c] for i, c in enumerate(per_layer)]
        ov = cp["overlap"]
        scopes = [("overall", "", ov["overall"])]
        scopes += [("language", lang, M) for lang, M in ov["per_language"].items()]
        scopes += [("layer", i, M) for i, M in enumerate(ov["per_layer"])]
        for scope, where, M in scopes:
            overlap += [[lab, scope, where, a, b, M[i][j]] for i, a in enumerate(names)
                        for j, b in enumerate(names) if i < j]
    out = {"criteria_counts.csv": _csv(["checkpoint", "criterion", "language", "layer", "count"], counts),
           "criteria_overlap.csv": _csv(["checkpoint", "scope", "where", "criterion_a", "criterion_b", "jaccard"],
                                        overlap)}
    if cr.get("ablation"):
        fields = list(SPECIFICITY_FIELDS)
        spec = [[cp["label"], name, lang] + [s[k] for k in fields]
                for name, ab in cr["ablation"].items() for cp in ab["checkpoints"]
                for lang, s in cp["specificity"].items()]
        out["criteria_specificity.csv"] = _csv(["checkpoint", "criterion", "language"] + fields, spec)
    return out


def _alignment_tables(al: dict) -> dict[str, str]:
    """alignment.csv: checkpoint × scope (overall, then each layer) × metric, value and interval."""
    rows = []
    for cp in al["checkpoints"]:
        for layer, scope in [("", cp["overall"])] + list(enumerate(cp["per_layer"])):
            for m in ALIGNMENT_METRICS:
                st = scope[m]
                lo, hi = st["ci"] if st["ci"] is not None else (None, None)
                rows.append([cp["label"], "overall" if layer == "" else "layer", layer, m, st["value"], lo, hi])
    return {"alignment.csv": _csv(["checkpoint", "scope", "layer", "metric", "value", "ci_lo", "ci_hi"], rows)}
