"""One self-contained HTML report per run, from a results dict or model (see results.py).

Everything is inline: CSS in a <style> element, figures as base64 PNG data URIs drawn with
matplotlib's Agg canvas, no scripts and no external URLs, so the file opens anywhere and can
be mailed or archived as is. Every number drawn in a figure is also printed in a table. Every
figure passes report_common.check_figure (axis labels, a legend or labelled colour bar on every
panel, zero lines where the sign matters) and its caption says which checkpoints it shows.
Identical checkpoints (``identical_checkpoints``) get a banner at the top and are marked in the
figures. Strings that come from the results (run name, language codes, checkpoint labels) are
HTML-escaped, and ``$`` is escaped in figure text so matplotlib does not read it as math.
The section across checkpoints lives in report_evolution.py; several runs compared in one page
in report_compare.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize

from lingua_ray import atomic
from lingua_ray.report_common import (colors, details, esc, figure, figure_html, fmt, fmt_ci, fmt_p, fmt_sd,
                                      mark_signed, nan, note, page, sparse_ticks, table, tex, tick_label, twins,
                                      zero_line)
from lingua_ray.report_criteria import criteria_section
from lingua_ray.report_evolution import evolution_section, identical_banner, identity_text
from lingua_ray.results import normalize_results, validate_results
from lingua_ray.specificity import mask_means

__all__ = ["fmt", "fmt_ci", "fmt_p", "fmt_sd", "select_checkpoints", "render_report", "write_report",
           "MAX_SELECTED", "MAX_LINES"]

MAX_SELECTED = 3  # checkpoints drawn as heatmaps: first, middle, last
MAX_LINES = 5  # checkpoints drawn as lines in the per-layer figure
MAX_MATRIX_TABLE = 120  # S above this: the S x S table of D is summarised, not printed


def select_checkpoints(n: int, k: int = MAX_SELECTED) -> list[int]:
    """Indices of the checkpoints drawn in per-checkpoint figures: all if n <= k, else spread
    evenly from first to last."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _labels(cps: list[dict], sel: list[int] | None = None) -> list[str]:
    return [cps[i]["label"] for i in (range(len(cps)) if sel is None else sel)]


# ---------------------------------------------------------------- figures


def _fig_blocks(cp: dict, langs: list[str]):
    B, D = np.array(cp["language_block_means"]), np.array(cp["meaning_block_means"])
    K, S = len(B), len(D)
    fig = figure(10, 4.3)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.15])
    im = ax1.imshow(B, cmap="viridis")
    ax1.set_xticks(range(K), [tex(l) for l in langs], rotation=90 if K > 6 else 0)
    ax1.set_yticks(range(K), [tex(l) for l in langs])
    if K <= 12:
        thr = (np.nanmin(B) + np.nanmax(B)) / 2
        for i in range(K):
            for j in range(K):
                ax1.text(j, i, f"{B[i, j]:.2f}", ha="center", va="center", fontsize=8,
                         color="black" if B[i, j] > thr else "white")
    ax1.set_title("B[l, m]: by language")
    ax1.set_xlabel("language m")
    ax1.set_ylabel("language l")
    fig.colorbar(im, ax=ax1, shrink=0.8, label="mean cosine")
    im = ax2.imshow(D, cmap="viridis", interpolation="nearest")
    ticks = sparse_ticks(S)
    ax2.set_xticks(ticks)
    ax2.set_yticks(ticks)
    ax2.set_xlabel("unit s'")
    ax2.set_ylabel("unit s")
    ax2.set_title("D[s, s']: by meaning")
    fig.colorbar(im, ax=ax2, shrink=0.8, label="mean cosine")
    fig.suptitle(tex(cp["label"]))
    return fig


def _band(ax, x, stats: list[dict], color, label, with_band: bool, lw: float = 1.6, band_label=None) -> None:
    y = [s["value"] for s in stats]
    ax.plot(x, y, color=color, label=label, lw=lw, marker="o" if len(x) < 30 else None, ms=3)
    if with_band and any(s["ci"] is not None for s in stats):
        lo = [s["ci"][0] if s["ci"] is not None else math.nan for s in stats]
        hi = [s["ci"][1] if s["ci"] is not None else math.nan for s in stats]
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0, label=band_label)


def _fig_layers(cps: list[dict], sel: list[int], level: float, tw: dict):
    """LRDS and SADS per layer for the checkpoints ``sel`` (all labelled), and the last one's norm shares."""
    L = len(cps[0]["per_layer"]["norm_share"])
    x = np.arange(L)
    fig = figure(12, 3.6)
    axes = fig.subplots(1, 3)
    col = colors(len(sel))
    last = sel[-1]
    for ax, m, title in ((axes[0], "lrds", "LRDS per layer"), (axes[1], "sads", "SADS per layer")):
        for c, i in zip(col, sel):
            _band(ax, x, cps[i]["per_layer"][m], c, tex(tick_label(cps[i]["label"], tw)), with_band=i == last,
                  band_label=f"{100 * level:g}% CI ({tex(cps[i]['label'])})")
        zero_line(ax)
        mark_signed(ax)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{m.upper()} (cosine difference)")
        ax.legend(fontsize=7)
    axes[2].bar(x, cps[last]["per_layer"]["norm_share"], color=col[-1], label=tex(cps[last]["label"]))
    axes[2].set_title("norm share per layer")
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("share of the squared norm")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(sparse_ticks(L, 12))
    return fig


def _fig_key_counts(cps: list[dict], sel: list[int], langs: list[str]):
    """Heatmap language x layer per selected checkpoint, one colour scale for all panels."""
    counts = [np.array([cps[i]["key_neurons"]["counts"][l] for l in langs]) for i in sel]
    K, L = counts[0].shape
    vmax = max(1, max(int(c.max()) for c in counts))
    norm = Normalize(0, vmax)  # one norm object: the shared colour bar belongs to every panel
    fig = figure(min(4.5, 1.2 + 0.3 * L) * len(sel) + 1.0, 1.4 + 0.3 * K)
    axes = np.atleast_1d(fig.subplots(1, len(sel), sharey=True))
    for ax, i, c in zip(axes, sel, counts):
        im = ax.imshow(c, cmap="magma", norm=norm, aspect="auto", interpolation="nearest")
        if c.size <= 120:
            for (r, k), v in np.ndenumerate(c):
                ax.text(k, r, str(v), ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 * vmax else "white")
        ax.set_xticks(sparse_ticks(L, 10))
        ax.set_xlabel("layer")
        ax.set_ylabel("language")
        ax.set_title(tex(cps[i]["label"]))
    axes[0].set_yticks(range(K), [tex(l) for l in langs])
    fig.colorbar(im, ax=list(axes), shrink=0.9, label="key neurons")
    return fig


def _ablation_matrix(cp: dict, langs: list[str]) -> tuple[list[str], list[list[float]], list[list[float | None]]]:
    """Rows (mask names), mean log PPL ratio per eval language and the sd over random repeats (None: < 2)."""
    order = ["none"] + [f"{kind}:{l}" for l in langs for kind in ("key", "random")]
    names, means, sds = [], [], []
    for mask, n, mean, sd in mask_means(cp["rows"], cp["eval_languages"], order):
        names.append(mask if n == 1 else f"{mask} (mean of {n})")
        means.append(mean)
        sds.append([None if math.isnan(x) else x for x in sd])
    return names, means, sds


def _fig_ablation(cp: dict, langs: list[str]):
    names, means, sds = _ablation_matrix(cp, langs)
    ev = cp["eval_languages"]
    M = np.array(means)
    fig = figure(13, max(3.6, 0.22 * len(names) + 1.5))
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.3, 1, 0.8])
    vmax = max(float(np.abs(M).max()), 1e-9)
    im = ax1.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    mark_signed(ax1)
    ax1.set_xticks(range(len(ev)), [tex(e) for e in ev], rotation=90 if len(ev) > 6 else 0)
    ax1.set_yticks(range(len(names)), [tex(n) for n in names], fontsize=7)
    if M.size <= 100:  # beyond that the numbers are only in the table (and text is slow to draw)
        for (i, j), v in np.ndenumerate(M):
            s = f"{v:.2f}" if sds[i][j] is None else f"{v:.2f}±{sds[i][j]:.2f}"
            ax1.text(j, i, s, ha="center", va="center", fontsize=6, color="white" if abs(v) > 0.6 * vmax else "black")
    ax1.set_xlabel("eval language")
    ax1.set_ylabel("mask")
    ax1.set_title("log(PPL / PPL intact)")
    fig.colorbar(im, ax=ax1, shrink=0.8, label="log PPL ratio (nats)")
    spec = cp["specificity"]
    ls = list(spec)
    x = np.arange(len(ls))
    w = 0.27
    ax2.bar(x - w, [spec[l]["own_log_ratio"] for l in ls], w, label="key: own", color="C3")
    ax2.bar(x, [nan(spec[l]["other_mean_log_ratio"]) for l in ls], w, label="key: other (mean)", color="C0")
    ax2.bar(x + w, [nan(spec[l]["random_own_log_ratio_mean"]) for l in ls], w,
            yerr=[nan(spec[l]["random_own_log_ratio_sd"]) for l in ls], label="random: own (± sd)", color="C7",
            capsize=2)
    ax2.set_title("own vs other language")
    ax2.set_ylabel("log PPL ratio (nats)")
    ax3.bar(x - w / 2, [nan(spec[l]["specificity"]) for l in ls], w, label="key", color="C3")
    ax3.bar(x + w / 2, [nan(spec[l]["random_specificity_mean"]) for l in ls], w,
            yerr=[nan(spec[l]["random_specificity_sd"]) for l in ls], label="random (± sd)", color="C7", capsize=2)
    ax3.set_title("specificity: own − mean other")
    ax3.set_ylabel("specificity (nats)")
    for ax in (ax2, ax3):
        ax.set_xticks(x, [tex(l) for l in ls], rotation=90 if len(ls) > 6 else 0)
        ax.set_xlabel("language of the mask")
        zero_line(ax)
        mark_signed(ax)
        ax.legend(fontsize=7)
    fig.suptitle(tex(cp["label"]))
    return fig


# ---------------------------------------------------------------- HTML sections


def _stat_cells(st: dict) -> list[str]:
    return [fmt(st["value"]), fmt_ci(st["ci"]), fmt_p(st["p_value"])]


def _header(d: dict) -> str:
    run, grid, st = d["run"], d["grid"], d["settings"]
    short = lambda s: esc(s if len(s) <= 24 else s[:24] + "…")  # noqa: E731
    ckpts = ", ".join(f"{esc(c['label'])}" + (f" (step {c['step']})" if c["step"] is not None else "")
                      + (f" @ {esc(c['revision'])}" if c["revision"] else "") for c in grid["checkpoints"])
    key = (f"z-score &gt; τ = {fmt(st['tau'], 2)}" if st["key_mode"] == "zscore"
           else f"top fraction {fmt(st['top_fraction'], 4)}")
    items = [
        ("created (UTC)", esc(run["created_utc"])), ("store", esc(run["store"])),
        ("model fingerprint", f'<code title="{esc(run["model_fingerprint"])}">{short(run["model_fingerprint"])}</code>'),
        ("corpus fingerprint", f'<code title="{esc(run["corpus_fingerprint"])}">{short(run["corpus_fingerprint"])}</code>'),
        ("lingua_ray", esc(run["lingua_ray_version"]) + f" (results.json version {d['schema_version']})"),
        (f"languages (K = {len(grid['languages'])})", ", ".join(esc(l) for l in grid["languages"])),
        ("grid", f"S = {grid['n_units']} aligned units, L = {grid['n_layers']} layers, "
                 f"F = {grid['n_neurons']} neurons per layer"),
        (f"checkpoints ({len(grid['checkpoints'])})", ckpts),
        ("identical weights", identity_text(d)),
        ("key neurons", key),
        ("statistics", f"{st['n_boot']} bootstrap resamples, {st['n_perm']} permutations, "
                       f"{100 * st['ci_level']:g}% intervals, seed {st['seed']}"),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f"<h1>lingua_ray report: {esc(run['name'])}</h1><dl>{dl}</dl>"


def _headline(d: dict) -> str:
    ci = f"{100 * d['settings']['ci_level']:g}% CI"
    head = ["checkpoint", "step"]
    for name in ("LRDS", "SADS", "LRDS (balanced)", "SADS (balanced)"):
        head += [name, ci, "p"]
    rows = []
    for cp in d["checkpoints"]:
        r = [esc(cp["label"]), "—" if cp["step"] is None else str(cp["step"])]
        r += _stat_cells(cp["overall"]["lrds"]) + _stat_cells(cp["overall"]["sads"])
        r += _stat_cells(cp["overall_balanced"]["lrds"]) + _stat_cells(cp["overall_balanced"]["sads"])
        rows.append(r)
    return ("<h2>Headline numbers</h2>" + table(head, rows, "num") + note(
        "LRDS &gt; 0: units in the same language are more alike than units in different languages "
        "(language-specific regions). SADS &gt; 0: translations of the same unit are more alike than "
        "different units across languages (shared meaning). <i>Paper</i> concatenates all layers, so "
        "layers with large activations weigh more; <i>balanced</i> normalises each layer first. "
        "p is the permutation p-value; — means not computed."))


def _matrix_table(M: list[list[float]], labels: list[str]) -> str:
    return table([""] + labels, ([f"<b>{lab}</b>"] + [fmt(v) for v in row] for lab, row in zip(labels, M)), "num")


def _blocks_section(d: dict, sel: list[int]) -> str:
    cps, langs = d["checkpoints"], [esc(l) for l in d["grid"]["languages"]]
    S = d["grid"]["n_units"]
    parts = ["<h2>Block-averaged similarity</h2>", note(
        "Left: B[l, m], the mean cosine between units of language l and different units of language m; "
        "a bright diagonal means language regions (LRDS = mean diagonal − mean off-diagonal). Right: "
        "D[s, s'], the mean cosine between unit s and unit s' across different languages; a bright "
        "diagonal means translations meet (SADS). Units are numbered from 0 in corpus order. One figure "
        "per checkpoint shown: the first, middle and last.")]
    for i in sel:
        cp = cps[i]
        parts.append(f"<h3>{esc(cp['label'])}</h3>")
        parts.append(figure_html(_fig_blocks(cp, d["grid"]["languages"]), f"Block means, {cp['label']}",
                                 "", [cp["label"]], _labels(cps)))
        parts.append(details(f"B by language ({esc(cp['label'])})", _matrix_table(cp["language_block_means"], langs)))
        D = cp["meaning_block_means"]
        if S <= MAX_MATRIX_TABLE:
            body = _matrix_table(D, [str(s) for s in range(S)])
        else:
            off = [(sum(r) - r[s]) / (S - 1) for s, r in enumerate(D)]
            body = ("<p>S is large: the diagonal and the mean off-diagonal per unit; the full matrix "
                    "is in results.json.</p>"
                    + table(["unit s", "D[s, s]", "mean over s' ≠ s of D[s, s']"],
                            ([str(s), fmt(D[s][s]), fmt(off[s])] for s in range(S)), "num"))
        parts.append(details(f"D by meaning ({esc(cp['label'])})", body))
    return "".join(parts)


def _layers_section(d: dict) -> str:
    cps = d["checkpoints"]
    sel = select_checkpoints(len(cps), MAX_LINES)
    level = d["settings"]["ci_level"]
    parts = ["<h2>Per layer</h2>", figure_html(
        _fig_layers(cps, sel, level, twins(d.get("identical_checkpoints"))), "LRDS and SADS per layer", esc(
            f"LRDS and SADS computed on each layer alone; one line per checkpoint shown, the band is the "
            f"{100 * level:g}% bootstrap interval of the last one shown ({cps[sel[-1]]['label']}). The bars give "
            "that checkpoint's share of the squared activation norm per layer: the paper's overall score "
            "weighs the layers roughly by this share. Every checkpoint, layer by layer: the heatmaps under "
            "Across checkpoints."), _labels(cps, sel), _labels(cps))]
    for i, cp in enumerate(cps):
        pl = cp["per_layer"]
        rows = ([str(k)] + _stat_cells(pl["lrds"][k]) + _stat_cells(pl["sads"][k]) + [fmt(pl["norm_share"][k])]
                for k in range(len(pl["norm_share"])))
        parts.append(details(f"per-layer numbers: {esc(cp['label'])}", table(
            ["layer", "LRDS", "CI", "p", "SADS", "CI", "p", "norm share"], rows, "num"), open_=i == len(cps) - 1))
    return "".join(parts)


def _key_section(d: dict, sel: list[int]) -> str:
    cps, langs = d["checkpoints"], d["grid"]["languages"]
    L = d["grid"]["n_layers"]
    parts = ["<h2>Key neurons</h2>", figure_html(
        _fig_key_counts(cps, sel, langs), "Key neurons per layer", esc(
            "Number of key neurons of each language in each layer. The paper finds them concentrated in the "
            "first and last layers. Overlap counts neurons key for both languages."), _labels(cps, sel),
        _labels(cps))]
    for i, cp in enumerate(cps):
        kn = cp["key_neurons"]
        counts = table(["language"] + [str(k) for k in range(L)] + ["total"],
                       ([esc(l)] + [str(c) for c in kn["counts"][l]] + [str(kn["total"][l])] for l in langs), "num")
        overlap = table([""] + [esc(l) for l in langs],
                        ([f"<b>{esc(l)}</b>"] + [str(v) for v in row] for l, row in zip(langs, kn["overlap"])), "num")
        parts.append(details(f"counts and overlap: {esc(cp['label'])}", counts + overlap, open_=i == len(cps) - 1))
    return "".join(parts)


def _ablation_section(d: dict) -> str:
    ab, langs = d["ablation"], d["grid"]["languages"]
    parts = ["<h2>Deactivation</h2>", f"<p>Held-out corpus {esc(ab['eval_corpus'])}, {ab['n_eval_units']} units; "
             f"{ab['n_random']} random masks per language (seed {ab['seed']}), each with the key mask's "
             "count in every layer.</p>", note(
                 "Left: log(PPL / PPL of the intact model) per mask and evaluation language; 0 is no "
                 "change, red is worse. Random rows are the mean over repeats (± their sd). Middle and "
                 "right: a key mask is language-specific when it hurts its own language more than the "
                 "others and more than a random mask of the same size.")]
    cps = ab["checkpoints"]
    ablated = [cp["label"] for cp in cps]
    for i in select_checkpoints(len(cps)):
        parts.append(f"<h3>{esc(cps[i]['label'])}</h3>")
        parts.append(figure_html(_fig_ablation(cps[i], langs), f"Deactivation, {cps[i]['label']}",
                                 esc(f"Ablated checkpoints: {', '.join(ablated)}."), [cps[i]["label"]],
                                 _labels(d["checkpoints"])))
    for cp in cps:
        ev = cp["eval_languages"]
        names, means, sds = _ablation_matrix(cp, langs)
        matrix = table(["mask"] + [esc(e) for e in ev], ([esc(n)] + [fmt_sd(m, s) for m, s in zip(mr, sr)]
                                                         for n, mr, sr in zip(names, means, sds)), "num")
        intact = next(r for r in cp["rows"] if r["mask"] == "none")
        ppl = table(["eval language", "PPL intact"], ([esc(e), fmt(intact["ppl"][e], 3)] for e in ev), "num")
        sp = cp["specificity"]
        spec = table(["language", "own", "other (mean)", "other (median)", "specificity",
                      "random own (mean ± sd)", "random specificity (mean ± sd)"],
                     ([esc(l), fmt(s["own_log_ratio"]), fmt(s["other_mean_log_ratio"]), fmt(s["other_median_log_ratio"]),
                       fmt(s["specificity"]), fmt_sd(s["random_own_log_ratio_mean"], s["random_own_log_ratio_sd"]),
                       fmt_sd(s["random_specificity_mean"], s["random_specificity_sd"])] for l, s in sp.items()), "num")
        parts.append(f"<h3>Specificity: {esc(cp['label'])}</h3>" + spec
                     + details(f"log PPL ratio matrix and intact PPL: {esc(cp['label'])}", matrix + ppl))
    return "".join(parts)


def render_report(results: dict) -> str:
    """The report as one HTML string; ``results`` (a dict or a results.Results) must satisfy validate_results."""
    validate_results(results)
    d = normalize_results(results, nan_to_null=True)
    sel = select_checkpoints(len(d["checkpoints"]))
    body = [_header(d), identical_banner(d), _headline(d), _blocks_section(d, sel), _layers_section(d),
            _key_section(d, sel)]
    if len(d["checkpoints"]) > 1:
        body.append(evolution_section(d))
    if d["ablation"] is not None:
        body.append(_ablation_section(d))
    body.append(criteria_section(d))
    return page(f"lingua_ray: {d['run']['name']}", body)


def write_report(results: dict, out_path: str | os.PathLike) -> Path:
    """Write the report to ``out_path`` (a folder gets ``report.html``), atomically; returns the path."""
    p = Path(out_path)
    if p.is_dir():
        p = p / "report.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(p, render_report(results))
    return p
