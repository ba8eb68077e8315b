"""The report's section across checkpoints, and the banner for identical checkpoints.

From results.json's ``evolution`` section (lingua_ray/evolution.py builds it); a file without one
(version 1) gets it computed here from the per-checkpoint numbers, less the Jaccard overlaps,
which need the key masks. Every figure shows every checkpoint (its caption says so), and the
checkpoints with the same weights are marked ≡ in figures and tables.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import Normalize

from lingua_ray.evolution import DEFAULT_K, summarise
from lingua_ray.report_common import (colors, details, esc, figure, figure_html, fmt, fmt_ci, fmt_p, mark_signed,
                                      note, steps_axis, table, tex, tick_label, twins, zero_line)

__all__ = ["evolution_of", "evolution_section", "identical_banner", "identity_text"]

MAX_TICKS = 20  # checkpoint tick labels on a heatmap; beyond that every n-th is labelled (all are drawn)
PARTS = ("first", "last", "ends")


def evolution_of(d: dict) -> tuple[dict, bool]:
    """(the evolution section, whether it came from the file) of a normalised results dict."""
    if d.get("evolution") is not None:
        return d["evolution"], True
    return summarise(d["checkpoints"], None, d["grid"]["languages"], k=DEFAULT_K,
                     level=d["settings"]["ci_level"]), False


# ---------------------------------------------------------------- identical checkpoints


def identity_text(d: dict) -> str:
    groups = d.get("identical_checkpoints")
    if groups is None:
        return "not checked (this results.json has no identical_checkpoints)"
    if not groups:
        return "none: every checkpoint's weights hash differently"
    return "; ".join(" ≡ ".join(esc(x) for x in g) for g in groups) + " (see the banner)"


def identical_banner(d: dict) -> str:
    groups = d.get("identical_checkpoints") or []
    if not groups:
        return ""
    items = "".join(f"<li>{' = '.join(esc(x) for x in g)}</li>" for g in groups)
    return ('<div class="banner" id="identical-checkpoints" role="alert"><b>Identical checkpoints.</b> '
            "These checkpoints have the same weights (equal <code>weights_sha256</code>), so their numbers "
            f"measure one model more than once:<ul>{items}</ul>Check the checkpoint paths or hub revisions. "
            "Figures and tables mark them with ≡.</div>")


# ---------------------------------------------------------------- figures


def _ticks(ax, refs: list[dict], tw: dict, axis: str = "x") -> None:
    n = len(refs)
    step = max(1, math.ceil(n / MAX_TICKS))
    idx = list(range(0, n, step))
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    setter(idx, [tex(tick_label(refs[i]["label"], tw)) for i in idx], rotation=45 if axis == "x" else 0,
           ha="right" if axis == "x" else None, fontsize=7)


def _steps(ax, refs: list[dict], tw: dict) -> list[float]:
    x, xlabel, ticklabels = steps_axis(refs)
    ax.set_xlabel(xlabel)
    if ticklabels is not None:
        _ticks(ax, refs, tw)
    return x


def _mark_twins(ax, x: list[float], y: list[float], refs: list[dict], tw: dict) -> None:
    pts = [(xi, yi) for xi, yi, r in zip(x, y, refs) if r["label"] in tw and yi is not None]
    if pts:
        ax.scatter(*zip(*pts), s=90, facecolors="none", edgecolors="red", lw=1.2, zorder=5,
                   label="identical weights (≡)")


def _fig_scores(d: dict, refs: list[dict], tw: dict):
    cps, level = d["checkpoints"], d["settings"]["ci_level"]
    fig = figure(11, 3.6)
    for ax, m in zip(fig.subplots(1, 2), ("lrds", "sads")):
        x = _steps(ax, refs, tw)
        for part, color, label in (("overall", "C0", "paper"), ("overall_balanced", "C1", "balanced")):
            stats = [cp[part][m] for cp in cps]
            ax.plot(x, [s["value"] for s in stats], color=color, marker="o", ms=3, label=label)
            if any(s["ci"] is not None for s in stats):
                ax.fill_between(x, [s["ci"][0] if s["ci"] else math.nan for s in stats],
                                [s["ci"][1] if s["ci"] else math.nan for s in stats], color=color, alpha=0.2,
                                lw=0, label=f"{label}: {100 * level:g}% CI")
        _mark_twins(ax, x, [cp["overall"][m]["value"] for cp in cps], refs, tw)
        zero_line(ax)
        mark_signed(ax)
        ax.set_title(f"{m.upper()} across checkpoints")
        ax.set_ylabel(f"{m.upper()} (cosine difference)")
        ax.legend(fontsize=7)
    return fig


def _heat(ax, M: np.ndarray, refs: list[dict], tw: dict, cmap: str, norm: Normalize, fmt_cell, text_color):
    """A layer × checkpoint heatmap (layer 0 at the bottom); ``text_color(x in [0, 1])`` for the cell numbers."""
    im = ax.imshow(M, cmap=cmap, norm=norm, aspect="auto", origin="lower", interpolation="nearest")
    if M.size <= 120:
        for (r, c), v in np.ndenumerate(M):
            ax.text(c, r, fmt_cell(v), ha="center", va="center", fontsize=6, color=text_color(norm(v)))
    _ticks(ax, refs, tw)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer")
    return im


def _fig_layer_heatmaps(ev: dict, refs: list[dict], tw: dict):
    fig = figure(min(14, 4 + 0.9 * len(refs)), 1.8 + 0.25 * len(ev["per_layer_lrds"]))
    for ax, m in zip(fig.subplots(1, 2), ("lrds", "sads")):
        M = np.array(ev[f"per_layer_{m}"], dtype=float)
        vmax = max(float(np.abs(M).max()), 1e-9)  # centred on 0: white is no structure, red > 0, blue < 0
        im = _heat(ax, M, refs, tw, "RdBu_r", Normalize(-vmax, vmax), lambda v: f"{v:.2f}",
                   lambda x: "white" if abs(x - 0.5) > 0.3 else "black")  # dark at both ends
        mark_signed(ax)
        ax.set_title(f"{m.upper()} per layer × checkpoint")
        fig.colorbar(im, ax=ax, shrink=0.9, label=f"{m.upper()} (cosine difference)")
    return fig


def _fig_key_heatmaps(ev: dict, langs: list[str], refs: list[dict], tw: dict):
    K = len(langs)
    ncol = min(K, 4)
    nrow = math.ceil(K / ncol)
    L = len(ev["per_layer_lrds"])
    fig = figure(min(16, ncol * (2.2 + 0.5 * len(refs))), nrow * (1.6 + 0.22 * L))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    mats = [np.array(ev["key_counts"][l]) for l in langs]
    norm = Normalize(0, max(1, max(int(M.max()) for M in mats)))  # shared: one colour bar for all panels
    for ax, lang, M in zip(axes, langs, mats):
        im = _heat(ax, M, refs, tw, "magma", norm, lambda v: str(int(v)),
                   lambda x: "black" if x > 0.6 else "white")  # magma is bright at the top
        ax.set_title(tex(lang))
    for ax in axes[K:]:
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes[:K]), shrink=0.9, label="key neurons")
    return fig


def _fig_edge(ev: dict, langs: list[str], refs: list[dict], tw: dict, L: int):
    k, level = ev["k"], ev["ci_level"]
    titles = {"first": f"first {k} layer{'s' * (k > 1)}", "last": f"last {k} layer{'s' * (k > 1)}",
              "ends": "both ends together"}
    fig = figure(13, 3.8)
    col = colors(len(langs))
    for ax, part in zip(fig.subplots(1, 3), PARTS):
        x = _steps(ax, refs, tw)
        for c, lang in zip(col, langs):
            ax.plot(x, [math.nan if e[part]["share"] is None else e[part]["share"] for e in ev["edge_share"][lang]],
                    color=c, lw=0.9, marker=".", label=tex(lang))
        pooled = ev["edge_share_pooled"]
        y = [math.nan if e[part]["share"] is None else e[part]["share"] for e in pooled]
        ax.plot(x, y, color="black", lw=2, marker="o", ms=3, label="all languages")
        ax.fill_between(x, [e[part]["ci"][0] if e[part]["ci"] else math.nan for e in pooled],
                        [e[part]["ci"][1] if e[part]["ci"] else math.nan for e in pooled], color="black",
                        alpha=0.15, lw=0, label=f"all: {100 * level:g}% Wilson CI")
        uni = pooled[0][part]["uniform"]
        ax.axhline(uni, color="grey", ls="--", lw=1, label=f"uniform spread ({uni:.3g})")
        _mark_twins(ax, x, y, refs, tw)
        ax.set_ylim(0, 1)
        ax.set_title(titles[part])
        ax.set_ylabel("share of key neurons")
        ax.legend(fontsize=6, ncol=2 if len(langs) > 5 else 1)
    fig.suptitle(f"where key neurons sit (L = {L}, k = {k})")
    return fig


def _fig_jaccard(ev: dict, langs: list[str], refs: list[dict], tw: dict):
    pairs = [f"{tick_label(a['label'], tw)} → {tick_label(b['label'], tw)}" for a, b in zip(refs, refs[1:])]
    x = np.arange(len(pairs))
    fig = figure(max(6.0, 1.2 * len(pairs) + 3), 3.6)
    ax = fig.subplots()
    for c, lang in zip(colors(len(langs)), langs):
        ax.plot(x, [math.nan if j is None else j for j in ev["jaccard"][lang]], color=c, marker="o", ms=3,
                label=tex(lang))
    chance = np.array([[math.nan if j is None else j for j in ev["jaccard_chance"][lang]] for lang in langs])
    with np.errstate(all="ignore"):
        mean_chance = np.nanmean(chance, axis=0) if np.isfinite(chance).any() else np.full(len(pairs), math.nan)
    ax.plot(x, mean_chance, color="grey", ls="--", label="chance (same per-layer sizes), mean over languages")
    ax.set_ylim(0, 1.05)
    step = max(1, math.ceil(len(pairs) / MAX_TICKS))
    ax.set_xticks(x[::step], [tex(p) for p in pairs[::step]], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("consecutive checkpoints")
    ax.set_ylabel("Jaccard overlap of key sets")
    ax.set_title("key-set overlap between consecutive checkpoints")
    ax.legend(fontsize=6, ncol=2 if len(langs) > 5 else 1)
    return fig


# ---------------------------------------------------------------- tables and the section


def _share_cells(s: dict) -> list[str]:
    return [fmt(s["share"], 3), fmt_ci(s["ci"]), fmt_p(s["p_value"])]


def _edge_table(rows: list[tuple[str, str, dict]], ev: dict) -> str:
    head = ["checkpoint", "language", "key neurons"]
    e0 = ev["edge_share_pooled"][0]
    for part in PARTS:
        head += [f"{part} share (uniform {e0[part]['uniform']:.3g})", f"{100 * ev['ci_level']:g}% CI", "p"]
    return table(head, ([esc(lab), esc(lang), str(e["n_key"])] + sum((_share_cells(e[p]) for p in PARTS), [])
                        for lab, lang, e in rows), "num")


def _matrix_rows(M: list[list], labels: list[str], cell) -> str:
    return table(["layer"] + labels, ([str(i)] + [cell(v) for v in row] for i, row in enumerate(M)), "num")


def evolution_section(d: dict) -> str:
    """The "Across checkpoints" section of a normalised results dict with more than one checkpoint."""
    ev, stored = evolution_of(d)
    refs, langs, L = d["grid"]["checkpoints"], d["grid"]["languages"], d["grid"]["n_layers"]
    tw = twins(d.get("identical_checkpoints"))
    all_labels = [r["label"] for r in refs]
    marked = [esc(tick_label(r["label"], tw)) for r in refs]
    twin_note = " Checkpoints marked ≡ have the same weights." if tw else ""
    parts = ["<h2>Across checkpoints</h2>"]
    if not stored:
        parts.append('<p class="note" id="evolution-computed">This results.json has no <code>evolution</code> '
                     "section: the figures below are computed from its per-checkpoint numbers with k = "
                     f"{DEFAULT_K}. The Jaccard overlaps need the key masks in the store: re-run the reduce "
                     "stage to get them.</p>")
    parts.append(figure_html(_fig_scores(d, refs, tw), "LRDS and SADS across checkpoints", esc(
        "The headline scores of each checkpoint with their bootstrap intervals, in training order; the numbers "
        "are in the headline table above." + twin_note), all_labels, all_labels))
    parts.append(figure_html(_fig_layer_heatmaps(ev, refs, tw), "Per-layer LRDS and SADS across checkpoints", esc(
        "Each layer's LRDS and SADS (rows, layer 0 at the bottom) at each checkpoint (columns), on a colour "
        "scale centred on 0: red is positive, blue negative, white none." + twin_note), all_labels, all_labels))
    parts.append(details("per-layer LRDS and SADS (layer × checkpoint)",
                         "<h4>LRDS</h4>" + _matrix_rows(ev["per_layer_lrds"], marked, fmt)
                         + "<h4>SADS</h4>" + _matrix_rows(ev["per_layer_sads"], marked, fmt)))
    parts.append(figure_html(_fig_key_heatmaps(ev, langs, refs, tw), "Key neurons per layer across checkpoints",
                             esc("One panel per language: key neurons in each layer (rows) at each checkpoint "
                                 "(columns), one colour scale for all panels." + twin_note), all_labels, all_labels))
    parts.append(details("key-neuron counts (layer × checkpoint, per language)", "".join(
        f"<h4>{esc(l)}</h4>" + _matrix_rows(ev["key_counts"][l], marked, str) for l in langs)))
    k = ev["k"]
    k_note = "" if k == ev["k_requested"] else (f" k = {ev['k_requested']} was asked for; with L = {L} layers "
                                                f"k = {k} keeps the two ends apart with a middle between them.")
    parts.append(figure_html(_fig_edge(ev, langs, refs, tw, L), "Key neurons in the first and last layers", esc(
        f"The share of key neurons in the first {k} and the last {k} of the {L} layers, and in both together, "
        "against the share a uniform spread over layers gives (dashed). Above the dashed line: concentrated "
        "there (the paper's claim). The band is the Wilson interval of the pooled share (each key neuron one "
        "binomial draw of a layer); p tests share = uniform." + k_note + twin_note), all_labels, all_labels))
    pooled = [(r["label"], "all languages", e) for r, e in zip(refs, ev["edge_share_pooled"])]
    per_lang = [(r["label"], l, ev["edge_share"][l][c]) for c, r in enumerate(refs) for l in langs]
    parts.append(_edge_table(pooled, ev) + details("edge shares per language", _edge_table(per_lang, ev)))
    if ev["jaccard"] is None:
        parts.append('<p id="jaccard-missing">Jaccard overlaps between checkpoints: not available (they need '
                     "the key masks; re-run the reduce stage).</p>")
    else:
        parts.append(figure_html(_fig_jaccard(ev, langs, refs, tw), "Key-set overlap between consecutive checkpoints",
                                 esc("Jaccard overlap |A ∩ B| / |A ∪ B| of each language's key neurons (layer, "
                                     "neuron) at one checkpoint and the next; dashed: what random sets of the same "
                                     "per-layer sizes would share. Identical weights give 1." + twin_note),
                                 all_labels, all_labels))
        rows = [[esc(f"{tick_label(a['label'], tw)} → {tick_label(b['label'], tw)}")]
                + [f"{fmt(ev['jaccard'][l][c], 3)} ({fmt(ev['jaccard_chance'][l][c], 3)})" for l in langs]
                for c, (a, b) in enumerate(zip(refs, refs[1:]))]
        parts.append(table(["checkpoints"] + [esc(l) + " (chance)" for l in langs], rows, "num jaccard"))
    parts.append(note("Claim (c): how LRDS and SADS, overall and per layer, move with training. Claim (d): "
                      "whether key neurons concentrate in the first and last layers, and whether the same "
                      "neurons stay key from one checkpoint to the next."))
    return "".join(parts)
