"""One page comparing several runs (model sizes, or families), each from its own results.json.

Runs may differ in layers, neurons, languages and checkpoints, so everything compared is a
quantity every run has: the headline LRDS/SADS across steps, per-layer scores against relative
depth (layer / (L − 1)), the pooled share of key neurons at both ends against each run's own
uniform share, and the mean Jaccard overlap between consecutive checkpoints. Each run's own
report stays the place for its details. Same drawing rules as report.py (report_common).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lingua_ray import atomic
from lingua_ray.report_common import (details, esc, figure, figure_html, fmt, fmt_ci, fmt_p, mark_signed, note,
                                      page, table, tex, twins, zero_line)
from lingua_ray.report_evolution import PARTS, evolution_of, identical_banner
from lingua_ray.results import load_results, normalize_results, validate_results

__all__ = ["render_comparison", "write_comparison", "run_names"]


def run_names(runs: Sequence[dict], names: Sequence[str] | None = None) -> list[str]:
    """The name of each run in the page: ``names``, else ``run.name``; repeats get ``#2``, ``#3``."""
    base = list(names) if names is not None else [r["run"]["name"] for r in runs]
    if len(base) != len(runs):
        raise ValueError(f"compare: {len(base)} names for {len(runs)} runs; give one name per results.json")
    out, seen = [], {}
    for n in base:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _x(runs: list[dict]) -> tuple[list[list[float]], str]:
    """x positions per run: steps when every run knows every step (unique within a run), else indices."""
    steps = [[r["step"] for r in d["grid"]["checkpoints"]] for d in runs]
    if all(all(s is not None for s in st) and len(set(st)) == len(st) for st in steps):
        return steps, "training step"
    return [list(range(len(st))) for st in steps], "checkpoint index (in training order)"


def _all_labels(runs: list[dict], names: list[str], last_only: bool = False) -> list[str]:
    return [f"{n}: {r['label']}" for d, n in zip(runs, names)
            for r in (d["grid"]["checkpoints"][-1:] if last_only else d["grid"]["checkpoints"])]


def _colors(n: int) -> list:
    return [f"C{i % 10}" for i in range(n)]


def _mark_twins(ax, runs, xs, ys) -> None:
    """Red rings on checkpoints whose weights equal another's in the same run (one legend entry)."""
    pts = [(x[i], y[i]) for d, x, y in zip(runs, xs, ys) for i, r in enumerate(d["grid"]["checkpoints"])
           if r["label"] in twins(d.get("identical_checkpoints")) and y[i] is not None]
    if pts:
        ax.scatter(*zip(*pts), s=90, facecolors="none", edgecolors="red", lw=1.2, zorder=5,
                   label="identical weights (≡)")


def _fig_scores(runs, names, xs, xlabel):
    fig = figure(11, 3.6)
    for ax, m in zip(fig.subplots(1, 2), ("lrds", "sads")):
        _mark_twins(ax, runs, xs, [[cp["overall"][m]["value"] for cp in d["checkpoints"]] for d in runs])
        for d, name, x, c in zip(runs, names, xs, _colors(len(runs))):
            st = [cp["overall"][m] for cp in d["checkpoints"]]
            ax.plot(x, [s["value"] for s in st], color=c, marker="o", ms=3, label=tex(name))
            if any(s["ci"] is not None for s in st):
                ax.fill_between(x, [s["ci"][0] if s["ci"] else math.nan for s in st],
                                [s["ci"][1] if s["ci"] else math.nan for s in st], color=c, alpha=0.15, lw=0,
                                label=f"{tex(name)}: CI")
        zero_line(ax)
        mark_signed(ax)
        ax.set_title(f"{m.upper()} (paper) across checkpoints")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{m.upper()} (cosine difference)")
        ax.legend(fontsize=7)
    return fig


def _fig_depth(runs, names):
    fig = figure(11, 3.6)
    for ax, m in zip(fig.subplots(1, 2), ("lrds", "sads")):
        for d, name, c in zip(runs, names, _colors(len(runs))):
            cp = d["checkpoints"][-1]
            L = len(cp["per_layer"][m])
            depth = np.arange(L) / max(1, L - 1)
            ax.plot(depth, [s["value"] for s in cp["per_layer"][m]], color=c, marker="o", ms=3,
                    label=f"{tex(name)} ({tex(cp['label'])}, L = {L})")
        zero_line(ax)
        mark_signed(ax)
        ax.set_title(f"{m.upper()} per layer, last checkpoint")
        ax.set_xlabel("relative depth: layer / (L − 1)")
        ax.set_ylabel(f"{m.upper()} (cosine difference)")
        ax.legend(fontsize=7)
    return fig


def _fig_edge(runs, names, evs, xs, xlabel):
    fig = figure(13, 3.8)
    for ax, part in zip(fig.subplots(1, 3), PARTS):
        _mark_twins(ax, runs, xs, [[e[part]["share"] for e in ev["edge_share_pooled"]] for ev in evs])
        for ev, name, x, c in zip(evs, names, xs, _colors(len(runs))):
            pooled = ev["edge_share_pooled"]
            ax.plot(x, [math.nan if e[part]["share"] is None else e[part]["share"] for e in pooled], color=c,
                    marker="o", ms=3, label=f"{tex(name)} (k = {ev['k']})")
            ax.axhline(pooled[0][part]["uniform"], color=c, ls="--", lw=0.9,
                       label=f"{tex(name)}: uniform {pooled[0][part]['uniform']:.3g}")
        ax.set_ylim(0, 1)
        ax.set_title({"first": "first k layers", "last": "last k layers", "ends": "both ends"}[part])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of key neurons (all languages)")
        ax.legend(fontsize=6)
    return fig


def _fig_jaccard(runs, names, evs, xs, xlabel):
    fig = figure(7, 3.6)
    ax = fig.subplots()
    for ev, name, x, c in zip(evs, names, xs, _colors(len(runs))):
        if ev["jaccard"] is None or len(x) < 2:
            continue
        J = np.array([[math.nan if j is None else j for j in v] for v in ev["jaccard"].values()], dtype=float)
        with np.errstate(all="ignore"):
            ax.plot(x[1:], np.nanmean(J, axis=0), color=c, marker="o", ms=3, label=tex(name))
    ax.set_ylim(0, 1.05)
    ax.set_title("key-set overlap with the previous checkpoint")
    ax.set_xlabel(f"{xlabel} (of the later checkpoint)")
    ax.set_ylabel("Jaccard overlap, mean over languages")
    ax.legend(fontsize=7)
    return fig


def render_comparison(results: Sequence[dict], names: Sequence[str] | None = None) -> str:
    """One HTML page comparing the runs (results dicts or models, each valid); ``names`` label them."""
    if len(results) < 1:
        raise ValueError("compare: give at least one results.json")
    for r in results:
        validate_results(r)
    runs = [normalize_results(r, nan_to_null=True) for r in results]
    names = run_names(runs, names)
    evs = [evolution_of(d)[0] for d in runs]
    xs, xlabel = _x(runs)
    every = _all_labels(runs, names)
    head = ["run", "model fingerprint", "L", "F", "K", "S", "checkpoints", "languages", "results.json"]
    rows = [[esc(n), f"<code>{esc(d['run']['model_fingerprint'][:19])}…</code>", str(d["grid"]["n_layers"]),
             str(d["grid"]["n_neurons"]), str(len(d["grid"]["languages"])), str(d["grid"]["n_units"]),
             esc(", ".join(r["label"] for r in d["grid"]["checkpoints"])), esc(", ".join(d["grid"]["languages"])),
             f"version {d['schema_version']}" + ("" if evolution_of(d)[1] else ", evolution computed here")]
            for n, d in zip(names, runs)]
    body = [f"<h1>lingua_ray comparison: {len(runs)} run{'s' * (len(runs) > 1)}</h1>", table(head, rows, "runs")]
    for n, d in zip(names, runs):
        banner = identical_banner(d)
        if banner:
            body.append(banner.replace("<b>Identical checkpoints.</b>", f"<b>Identical checkpoints in {esc(n)}.</b>"))
    body.append(figure_html(_fig_scores(runs, names, xs, xlabel), "LRDS and SADS across checkpoints, per run",
                            esc("The paper's overall scores with their bootstrap intervals."), every, every))
    last = _all_labels(runs, names, last_only=True)
    body.append(figure_html(_fig_depth(runs, names), "Per-layer scores against relative depth", esc(
        "Each run's last checkpoint; layers placed at layer / (L − 1) so models of different depth line up."),
        last, every, elsewhere="each run's own report"))
    body.append(figure_html(_fig_edge(runs, names, evs, xs, xlabel), "Key neurons at the ends, per run", esc(
        "The pooled share of key neurons in the first and last k layers of each run, against that run's "
        "uniform share (dashed, same colour)."), every, every))
    with_j = [n for n, ev in zip(names, evs) if ev["jaccard"] is not None]
    if with_j and any(len(x) > 1 for x in xs):
        shown = [f"{n}: {r['label']}" for d, n, ev in zip(runs, names, evs) if ev["jaccard"] is not None
                 for r in d["grid"]["checkpoints"]]
        missing = [n for n in names if n not in with_j]
        body.append(figure_html(_fig_jaccard(runs, names, evs, xs, xlabel), "Key-set overlap across checkpoints",
                                esc("Mean over languages of the Jaccard overlap with the previous checkpoint."
                                    + (f" No key masks (no Jaccard) for: {', '.join(missing)}." if missing else "")),
                                shown, every, elsewhere="each run's own report"))
    table_rows = []
    for n, d, ev in zip(names, runs, evs):
        for cp, e in zip(d["checkpoints"], ev["edge_share_pooled"]):
            table_rows.append([esc(n), esc(cp["label"]), "—" if cp["step"] is None else str(cp["step"])]
                              + [fmt(cp["overall"][m]["value"]) + " " + fmt_ci(cp["overall"][m]["ci"])
                                 for m in ("lrds", "sads")]
                              + [f"{fmt(e['ends']['share'], 3)} {fmt_ci(e['ends']['ci'])} (uniform "
                                 f"{e['ends']['uniform']:.3g}, p {fmt_p(e['ends']['p_value'])})"])
    body.append(details("numbers", table(["run", "checkpoint", "step", "LRDS [CI]", "SADS [CI]",
                                          "key neurons at both ends [CI]"], table_rows, "num"), open_=True))
    body.append(note("Each run's own report has the per-language and per-layer details. Runs with different "
                     "languages are compared on pooled numbers only."))
    return page(f"lingua_ray comparison: {', '.join(names)}", body)


def write_comparison(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                     names: Sequence[str] | None = None) -> Path:
    """Load each results.json (a file or its folder), render the comparison, write it atomically."""
    runs = [load_results(p) for p in paths]
    text = render_comparison(runs, names)
    out = Path(out_path)
    if out.is_dir():
        out = out / "compare.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, text)
    return out
