"""One self-contained HTML report per run, from a results dict or model (see results.py).

Everything is inline: CSS in a <style> element, figures as base64 PNG data URIs drawn with
matplotlib's Agg canvas, no scripts and no external URLs, so the file opens anywhere and can
be mailed or archived as is. Every number drawn in a figure is also printed in a table.
Strings that come from the results (run name, language codes, checkpoint labels) are
HTML-escaped, and ``$`` is escaped in figure text so matplotlib does not read it as math.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lingua_ray import atomic
from lingua_ray.results import normalize_results, validate_results
from lingua_ray.specificity import mask_means

DPI = 80
MAX_SELECTED = 3  # checkpoints drawn as heatmaps: first, middle, last
MAX_MATRIX_TABLE = 120  # S above this: the S x S table of D is summarised, not printed


# ---------------------------------------------------------------- formatting (tests use these)


def fmt(x: float | None, digits: int = 4) -> str:
    """A number as the report prints it; None (undefined) as an em dash."""
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ci(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def fmt_sd(mean: float | None, sd: float | None) -> str:
    return fmt(mean) if sd is None else f"{fmt(mean)} ± {fmt(sd)}"


def select_checkpoints(n: int, k: int = MAX_SELECTED) -> list[int]:
    """Indices of the checkpoints drawn in per-checkpoint figures: all if n <= k, else spread
    evenly from first to last."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _tex(s: Any) -> str:
    return str(s).replace("$", r"\$")


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


# ---------------------------------------------------------------- figures


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _sparse_ticks(n: int, max_ticks: int = 10) -> list[int]:
    step = max(1, math.ceil(n / max_ticks))
    return list(range(0, n, step))


def _fig_blocks(cp: dict, langs: list[str]) -> Figure:
    B, D = np.array(cp["language_block_means"]), np.array(cp["meaning_block_means"])
    K, S = len(B), len(D)
    fig = _figure(10, 4.3)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.15])
    im = ax1.imshow(B, cmap="viridis")
    ax1.set_xticks(range(K), [_tex(l) for l in langs], rotation=90 if K > 6 else 0)
    ax1.set_yticks(range(K), [_tex(l) for l in langs])
    if K <= 12:
        thr = (np.nanmin(B) + np.nanmax(B)) / 2
        for i in range(K):
            for j in range(K):
                ax1.text(j, i, f"{B[i, j]:.2f}", ha="center", va="center", fontsize=8,
                         color="black" if B[i, j] > thr else "white")
    ax1.set_title("B[l, m]: by language")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    im = ax2.imshow(D, cmap="viridis", interpolation="nearest")
    ticks = _sparse_ticks(S)
    ax2.set_xticks(ticks)
    ax2.set_yticks(ticks)
    ax2.set_xlabel("unit s'")
    ax2.set_ylabel("unit s")
    ax2.set_title("D[s, s']: by meaning")
    fig.colorbar(im, ax=ax2, shrink=0.8)
    fig.suptitle(_tex(cp["label"]))
    return fig


def _band(ax, x, stats: list[dict], color, label, with_band: bool, lw: float = 1.6) -> None:
    y = [s["value"] for s in stats]
    ax.plot(x, y, color=color, label=label, lw=lw, marker="o" if len(x) < 30 else None, ms=3)
    if with_band and any(s["ci"] is not None for s in stats):
        lo = [s["ci"][0] if s["ci"] is not None else math.nan for s in stats]
        hi = [s["ci"][1] if s["ci"] is not None else math.nan for s in stats]
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def _fig_layers(cps: list[dict], sel: list[int]) -> Figure:
    L = len(cps[0]["per_layer"]["norm_share"])
    x = np.arange(L)
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    colors = _colors(len(cps))
    last = len(cps) - 1
    for ax, m, title in ((axes[0], "lrds", "LRDS per layer"), (axes[1], "sads", "SADS per layer")):
        for i, cp in enumerate(cps):
            _band(ax, x, cp["per_layer"][m], colors[i], _tex(cp["label"]) if i in sel else None,
                  with_band=i == last, lw=1.8 if i in sel else 0.8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(title)
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=8)
    axes[2].bar(x, cps[last]["per_layer"]["norm_share"], color=colors[last])
    axes[2].set_title(f"norm share per layer ({_tex(cps[last]['label'])})")
    axes[2].set_xlabel("layer")
    for ax in axes:
        ax.set_xticks(_sparse_ticks(L, 12))
    return fig


def _fig_key_counts(cps: list[dict], sel: list[int], langs: list[str]) -> Figure:
    """Heatmap language x layer per selected checkpoint, one colour scale for all panels."""
    counts = [np.array([cps[i]["key_neurons"]["counts"][l] for l in langs]) for i in sel]
    K, L = counts[0].shape
    vmax = max(1, max(int(c.max()) for c in counts))
    fig = _figure(min(4.5, 1.2 + 0.3 * L) * len(sel) + 1.0, 1.2 + 0.3 * K)
    axes = np.atleast_1d(fig.subplots(1, len(sel), sharey=True))
    for ax, i, c in zip(axes, sel, counts):
        im = ax.imshow(c, cmap="magma", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        if c.size <= 120:
            for (r, k), v in np.ndenumerate(c):
                ax.text(k, r, str(v), ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 * vmax else "white")
        ax.set_xticks(_sparse_ticks(L, 10))
        ax.set_xlabel("layer")
        ax.set_title(_tex(cps[i]["label"]))
    axes[0].set_yticks(range(K), [_tex(l) for l in langs])
    fig.colorbar(im, ax=list(axes), shrink=0.9, label="key neurons")
    return fig


def _steps_axis(cps: list[dict]) -> tuple[list[float], str, list[str] | None]:
    steps = [cp["step"] for cp in cps]
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        return steps, "training step", None
    return list(range(len(cps))), "checkpoint", [cp["label"] for cp in cps]


def _fig_evolution(cps: list[dict]) -> Figure:
    x, xlabel, ticklabels = _steps_axis(cps)
    fig = _figure(10, 3.4)
    axes = fig.subplots(1, 2)
    for ax, m in zip(axes, ("lrds", "sads")):
        for part, color, label in (("overall", "C0", "paper"), ("overall_balanced", "C1", "balanced")):
            _band(ax, x, [cp[part][m] for cp in cps], color, label, with_band=True)
        ax.set_title(f"{m.upper()} across checkpoints")
        ax.set_xlabel(xlabel)
        if ticklabels is not None:
            t = _sparse_ticks(len(x), 8)
            ax.set_xticks([x[i] for i in t], [_tex(ticklabels[i]) for i in t], rotation=30, ha="right")
    axes[0].legend(fontsize=8)
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


def _fig_ablation(cp: dict, langs: list[str]) -> Figure:
    names, means, sds = _ablation_matrix(cp, langs)
    ev = cp["eval_languages"]
    M = np.array(means)
    fig = _figure(13, max(3.6, 0.22 * len(names) + 1.5))
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.3, 1, 0.8])
    vmax = max(float(np.abs(M).max()), 1e-9)
    im = ax1.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax1.set_xticks(range(len(ev)), [_tex(e) for e in ev], rotation=90 if len(ev) > 6 else 0)
    ax1.set_yticks(range(len(names)), [_tex(n) for n in names], fontsize=7)
    if M.size <= 100:  # beyond that the numbers are only in the table (and text is slow to draw)
        for (i, j), v in np.ndenumerate(M):
            s = f"{v:.2f}" if sds[i][j] is None else f"{v:.2f}±{sds[i][j]:.2f}"
            ax1.text(j, i, s, ha="center", va="center", fontsize=6, color="white" if abs(v) > 0.6 * vmax else "black")
    ax1.set_xlabel("eval language")
    ax1.set_title("log(PPL / PPL intact)")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    spec = cp["specificity"]
    ls = list(spec)
    x = np.arange(len(ls))
    w = 0.27
    ax2.bar(x - w, [spec[l]["own_log_ratio"] for l in ls], w, label="key: own", color="C3")
    ax2.bar(x, [_nan(spec[l]["other_mean_log_ratio"]) for l in ls], w, label="key: other (mean)", color="C0")
    ax2.bar(x + w, [_nan(spec[l]["random_own_log_ratio_mean"]) for l in ls], w,
            yerr=[_nan(spec[l]["random_own_log_ratio_sd"]) for l in ls], label="random: own", color="C7", capsize=2)
    ax2.set_xticks(x, [_tex(l) for l in ls], rotation=90 if len(ls) > 6 else 0)
    ax2.set_title("own vs other language")
    ax2.legend(fontsize=7)
    ax3.bar(x - w / 2, [_nan(spec[l]["specificity"]) for l in ls], w, label="key", color="C3")
    ax3.bar(x + w / 2, [_nan(spec[l]["random_specificity_mean"]) for l in ls], w,
            yerr=[_nan(spec[l]["random_specificity_sd"]) for l in ls], label="random", color="C7", capsize=2)
    ax3.set_xticks(x, [_tex(l) for l in ls], rotation=90 if len(ls) > 6 else 0)
    ax3.set_title("specificity: own − mean other")
    ax3.legend(fontsize=7)
    for ax in (ax2, ax3):
        ax.axhline(0, color="grey", lw=0.6)
    fig.suptitle(_tex(cp["label"]))
    return fig


# ---------------------------------------------------------------- HTML pieces


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table from already-escaped cell strings."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def _note(text: str) -> str:
    return f'<p class="note"><b>How to read this.</b> {text}</p>'


def _stat_cells(st: dict) -> list[str]:
    return [fmt(st["value"]), fmt_ci(st["ci"]), fmt_p(st["p_value"])]


def _header(d: dict) -> str:
    run, grid, st = d["run"], d["grid"], d["settings"]
    short = lambda s: _e(s if len(s) <= 24 else s[:24] + "…")  # noqa: E731
    ckpts = ", ".join(f"{_e(c['label'])}" + (f" (step {c['step']})" if c["step"] is not None else "")
                      + (f" @ {_e(c['revision'])}" if c["revision"] else "") for c in grid["checkpoints"])
    key = (f"z-score &gt; τ = {fmt(st['tau'], 2)}" if st["key_mode"] == "zscore"
           else f"top fraction {fmt(st['top_fraction'], 4)}")
    items = [
        ("created (UTC)", _e(run["created_utc"])), ("store", _e(run["store"])),
        ("model fingerprint", f'<code title="{_e(run["model_fingerprint"])}">{short(run["model_fingerprint"])}</code>'),
        ("corpus fingerprint", f'<code title="{_e(run["corpus_fingerprint"])}">{short(run["corpus_fingerprint"])}</code>'),
        ("lingua_ray", _e(run["lingua_ray_version"])),
        (f"languages (K = {len(grid['languages'])})", ", ".join(_e(l) for l in grid["languages"])),
        ("grid", f"S = {grid['n_units']} aligned units, L = {grid['n_layers']} layers, "
                 f"F = {grid['n_neurons']} neurons per layer"),
        (f"checkpoints ({len(grid['checkpoints'])})", ckpts),
        ("key neurons", key),
        ("statistics", f"{st['n_boot']} bootstrap resamples, {st['n_perm']} permutations, "
                       f"{100 * st['ci_level']:g}% intervals, seed {st['seed']}"),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f"<h1>lingua_ray report: {_e(run['name'])}</h1><dl>{dl}</dl>"


def _headline(d: dict) -> str:
    ci = f"{100 * d['settings']['ci_level']:g}% CI"
    head = ["checkpoint", "step"]
    for name in ("LRDS", "SADS", "LRDS (balanced)", "SADS (balanced)"):
        head += [name, ci, "p"]
    rows = []
    for cp in d["checkpoints"]:
        r = [_e(cp["label"]), "—" if cp["step"] is None else str(cp["step"])]
        r += _stat_cells(cp["overall"]["lrds"]) + _stat_cells(cp["overall"]["sads"])
        r += _stat_cells(cp["overall_balanced"]["lrds"]) + _stat_cells(cp["overall_balanced"]["sads"])
        rows.append(r)
    return ("<h2>Headline numbers</h2>" + _table(head, rows, "num") + _note(
        "LRDS &gt; 0: units in the same language are more alike than units in different languages "
        "(language-specific regions). SADS &gt; 0: translations of the same unit are more alike than "
        "different units across languages (shared meaning). <i>Paper</i> concatenates all layers, so "
        "layers with large activations weigh more; <i>balanced</i> normalises each layer first. "
        "p is the permutation p-value; — means not computed."))


def _matrix_table(M: list[list[float]], labels: list[str]) -> str:
    return _table([""] + labels, ([f"<b>{lab}</b>"] + [fmt(v) for v in row] for lab, row in zip(labels, M)), "num")


def _blocks_section(d: dict, sel: list[int]) -> str:
    langs = [_e(l) for l in d["grid"]["languages"]]
    S = d["grid"]["n_units"]
    parts = ["<h2>Block-averaged similarity</h2>", _note(
        "Left: B[l, m], the mean cosine between units of language l and different units of language m; "
        "a bright diagonal means language regions (LRDS = mean diagonal − mean off-diagonal). Right: "
        "D[s, s'], the mean cosine between unit s and unit s' across different languages; a bright "
        "diagonal means translations meet (SADS). Units are numbered from 0 in corpus order.")]
    for i in sel:
        cp = d["checkpoints"][i]
        parts.append(f"<h3>{_e(cp['label'])}</h3>")
        parts.append(_img(_fig_blocks(cp, d["grid"]["languages"]), f"block means, {cp['label']}"))
        parts.append(_details(f"B by language ({_e(cp['label'])})", _matrix_table(cp["language_block_means"], langs)))
        D = cp["meaning_block_means"]
        if S <= MAX_MATRIX_TABLE:
            body = _matrix_table(D, [str(s) for s in range(S)])
        else:
            off = [(sum(r) - r[s]) / (S - 1) for s, r in enumerate(D)]
            body = ("<p>S is large: the diagonal and the mean off-diagonal per unit; the full matrix "
                    "is in results.json.</p>"
                    + _table(["unit s", "D[s, s]", "mean over s' ≠ s of D[s, s']"],
                             ([str(s), fmt(D[s][s]), fmt(off[s])] for s in range(S)), "num"))
        parts.append(_details(f"D by meaning ({_e(cp['label'])})", body))
    return "".join(parts)


def _layers_section(d: dict, sel: list[int]) -> str:
    cps = d["checkpoints"]
    parts = ["<h2>Per layer</h2>", _img(_fig_layers(cps, sel), "LRDS and SADS per layer"), _note(
        "LRDS and SADS computed on each layer alone; one line per checkpoint, the band is the "
        f"bootstrap interval of the last checkpoint ({_e(cps[-1]['label'])}). The bars give each "
        "layer's share of the squared activation norm: the paper's overall score weighs the layers "
        "roughly by this share.")]
    for i, cp in enumerate(cps):
        pl = cp["per_layer"]
        rows = ([str(k)] + _stat_cells(pl["lrds"][k]) + _stat_cells(pl["sads"][k]) + [fmt(pl["norm_share"][k])]
                for k in range(len(pl["norm_share"])))
        parts.append(_details(f"per-layer numbers: {_e(cp['label'])}", _table(
            ["layer", "LRDS", "CI", "p", "SADS", "CI", "p", "norm share"], rows, "num"), open_=i == len(cps) - 1))
    return "".join(parts)


def _key_section(d: dict, sel: list[int]) -> str:
    langs = d["grid"]["languages"]
    L = d["grid"]["n_layers"]
    parts = ["<h2>Key neurons</h2>", _img(_fig_key_counts(d["checkpoints"], sel, langs), "key neurons per layer"),
             _note("Number of key neurons of each language in each layer. The paper finds them "
                   "concentrated in the first and last layers. Overlap counts neurons key for both languages.")]
    for i, cp in enumerate(d["checkpoints"]):
        kn = cp["key_neurons"]
        counts = _table(["language"] + [str(k) for k in range(L)] + ["total"],
                        ([_e(l)] + [str(c) for c in kn["counts"][l]] + [str(kn["total"][l])] for l in langs), "num")
        overlap = _table([""] + [_e(l) for l in langs],
                         ([f"<b>{_e(l)}</b>"] + [str(v) for v in row] for l, row in zip(langs, kn["overlap"])), "num")
        parts.append(_details(f"counts and overlap: {_e(cp['label'])}", counts + overlap, open_=i == len(d["checkpoints"]) - 1))
    return "".join(parts)


def _evolution_section(d: dict) -> str:
    return ("<h2>Across checkpoints</h2>" + _img(_fig_evolution(d["checkpoints"]), "LRDS and SADS across checkpoints")
            + _note("The headline scores of each checkpoint with their intervals, in training order; "
                    "the numbers are in the headline table above."))


def _ablation_section(d: dict) -> str:
    ab, langs = d["ablation"], d["grid"]["languages"]
    parts = ["<h2>Deactivation</h2>", f"<p>Held-out corpus {_e(ab['eval_corpus'])}, {ab['n_eval_units']} units; "
             f"{ab['n_random']} random masks per language (seed {ab['seed']}), each with the key mask's "
             "count in every layer.</p>", _note(
                 "Left: log(PPL / PPL of the intact model) per mask and evaluation language; 0 is no "
                 "change, red is worse. Random rows are the mean over repeats (± their sd). Middle and "
                 "right: a key mask is language-specific when it hurts its own language more than the "
                 "others and more than a random mask of the same size.")]
    cps = ab["checkpoints"]
    for i in select_checkpoints(len(cps)):
        parts.append(f"<h3>{_e(cps[i]['label'])}</h3>")
        parts.append(_img(_fig_ablation(cps[i], langs), f"deactivation, {cps[i]['label']}"))
    for cp in cps:
        ev = cp["eval_languages"]
        names, means, sds = _ablation_matrix(cp, langs)
        matrix = _table(["mask"] + [_e(e) for e in ev], ([_e(n)] + [fmt_sd(m, s) for m, s in zip(mr, sr)]
                                                       for n, mr, sr in zip(names, means, sds)), "num")
        intact = next(r for r in cp["rows"] if r["mask"] == "none")
        ppl = _table(["eval language", "PPL intact"], ([_e(e), fmt(intact["ppl"][e], 3)] for e in ev), "num")
        sp = cp["specificity"]
        spec = _table(["language", "own", "other (mean)", "other (median)", "specificity",
                       "random own (mean ± sd)", "random specificity (mean ± sd)"],
                      ([_e(l), fmt(s["own_log_ratio"]), fmt(s["other_mean_log_ratio"]), fmt(s["other_median_log_ratio"]),
                        fmt(s["specificity"]), fmt_sd(s["random_own_log_ratio_mean"], s["random_own_log_ratio_sd"]),
                        fmt_sd(s["random_specificity_mean"], s["random_specificity_sd"])] for l, s in sp.items()), "num")
        parts.append(f"<h3>Specificity: {_e(cp['label'])}</h3>" + spec
                     + _details(f"log PPL ratio matrix and intact PPL: {_e(cp['label'])}", matrix + ppl))
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:2px 6px}
th{background:#f3f3f3}table.num td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.note{background:#f7f9fc;border-left:3px solid #7a9cc6;padding:.4em .8em;font-size:.9em}
details{margin:.4em 0}summary{cursor:pointer;color:#345}code{font-size:.9em}
"""


def render_report(results: dict) -> str:
    """The report as one HTML string; ``results`` (a dict or a results.Results) must satisfy validate_results."""
    validate_results(results)
    d = normalize_results(results, nan_to_null=True)
    sel = select_checkpoints(len(d["checkpoints"]))
    body = [_header(d), _headline(d), _blocks_section(d, sel), _layers_section(d, sel), _key_section(d, sel)]
    if len(d["checkpoints"]) > 1:
        body.append(_evolution_section(d))
    if d["ablation"] is not None:
        body.append(_ablation_section(d))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>lingua_ray: {_e(d['run']['name'])}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(results: dict, out_path: str | os.PathLike) -> Path:
    """Write the report to ``out_path`` (a folder gets ``report.html``), atomically; returns the path."""
    p = Path(out_path)
    if p.is_dir():
        p = p / "report.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(p, render_report(results))
    return p
