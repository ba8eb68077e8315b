"""What every report page shares: number formats, HTML pieces, and figures that cannot go unlabelled.

``figure_html`` is the only way a figure reaches a page. It first runs ``check_figure``: every
panel has both axis labels and a legend (a labelled colour bar counts for a heatmap), every drawn
line is in a legend (reference lines are marked ``gid="zero"`` or ``gid="reference"``), a panel
marked signed (``mark_signed``) has a zero line or a colour scale centred on 0. A figure that
breaks a rule raises FigureError naming the panel, so an unlabelled figure cannot be shipped.
It then writes ``<figure>`` with the PNG inline, an alt text and a caption listing the panels'
axis labels and legend entries, and which checkpoints the figure shows (a required argument).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Iterable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 80
SIGNED = "signed"  # gid of a panel whose values have a meaningful sign


class FigureError(ValueError):
    """A figure that breaks the labelling rules (names the panel and the rule)."""


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


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def tex(s: Any) -> str:
    """Figure text with ``$`` escaped, so matplotlib does not read it as math."""
    return str(s).replace("$", r"\$")


def nan(x: float | None) -> float:
    return math.nan if x is None else x


# ---------------------------------------------------------------- HTML pieces


def table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table from already-escaped cell strings."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def note(text: str) -> str:
    return f'<p class="note"><b>How to read this.</b> {text}</p>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:2px 6px}
th{background:#f3f3f3}table.num td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
figure{margin:.8em 0}figcaption{font-size:.85em;color:#333}figcaption .panels{color:#555}
.note{background:#f7f9fc;border-left:3px solid #7a9cc6;padding:.4em .8em;font-size:.9em}
.banner{background:#fff4e5;border:2px solid #e69500;padding:.6em .9em;margin:1em 0;font-size:.95em}
details{margin:.4em 0}summary{cursor:pointer;color:#345}code{font-size:.9em}
"""


def page(title: str, body: Sequence[str]) -> str:
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


# ---------------------------------------------------------------- figures


def figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def mark_signed(ax) -> None:
    """Declare a panel's values signed: check_figure then wants a zero line or a colour scale centred on 0."""
    ax.set_gid(SIGNED)


def zero_line(ax, horizontal: bool = True) -> None:
    (ax.axhline if horizontal else ax.axvline)(0, color="grey", lw=0.8, ls="-", gid="zero")


def sparse_ticks(n: int, max_ticks: int = 10) -> list[int]:
    step = max(1, math.ceil(n / max_ticks))
    return list(range(0, n, step))


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def _panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.get_visible() and ax.axison]


def _colorbar_label(ax) -> str | None:
    """The label of the colour bar this panel's colours are read on; None when there is none.

    A colour bar shared by several panels belongs to one mappable; the other panels count as
    having it when their images use the very same norm object (``norm=`` one shared Normalize).
    """
    bars = {id(a._colorbar.mappable.norm): a._colorbar for a in ax.figure.axes if hasattr(a, "_colorbar")}
    for m in list(ax.images) + list(ax.collections):
        cb = getattr(m, "colorbar", None) or bars.get(id(getattr(m, "norm", None)))
        if cb is not None:
            return cb.ax.get_ylabel() or cb.ax.get_xlabel() or ""
    return None


def check_figure(fig: Figure) -> None:
    """Raise FigureError unless every panel is labelled as the module docstring says."""
    for n, ax in enumerate(_panels(fig)):
        name = f"panel {n} ({ax.get_title() or 'untitled'!r})"
        if not ax.get_xlabel() or not ax.get_ylabel():
            raise FigureError(f"{name} lacks an axis label (x {ax.get_xlabel()!r}, y {ax.get_ylabel()!r})")
        cbar = _colorbar_label(ax)
        if cbar == "":
            raise FigureError(f"{name}: its colour bar has no label")
        if ax.get_legend() is None and cbar is None:
            raise FigureError(f"{name} has neither a legend nor a colour bar")
        for line in ax.lines:
            drawn = line.get_linestyle() not in ("None", "", " ") and len(line.get_xdata()) > 0
            if drawn and line.get_label().startswith("_") and line.get_gid() not in ("zero", "reference"):
                raise FigureError(f"{name} draws an unlabelled line")
        if ax.get_gid() == SIGNED:
            has_zero = any(line.get_gid() == "zero" for line in ax.lines)
            centred = any(abs(im.norm.vmin + im.norm.vmax) <= 1e-12 * max(1.0, abs(im.norm.vmax))
                          for im in ax.images if im.norm.vmin is not None)
            if not (has_zero or centred):
                raise FigureError(f"{name} shows signed values without a zero line or a scale centred on 0")


def describe_figure(fig: Figure) -> list[dict]:
    """Per panel: title, x and y labels, legend entries and colour-bar label (what the caption lists)."""
    out = []
    for ax in _panels(fig):
        leg = ax.get_legend()
        out.append({"title": ax.get_title(), "x": ax.get_xlabel(), "y": ax.get_ylabel(),
                    "legend": [t.get_text() for t in leg.get_texts()] if leg is not None else [],
                    "colorbar": _colorbar_label(ax)})
    return out


def _untex(s: str) -> str:
    return s.replace(r"\$", "$")


def shown_text(shown: Sequence[str], total: Sequence[str], elsewhere: str = "the tables") -> str:
    """'Shows all 4 checkpoints: a, b, c, d.' or 'Shows 3 of 4 checkpoints: a, c, d (not shown: b; ...).'"""
    if list(shown) == list(total):
        return f"Shows all {len(total)} checkpoint{'s' if len(total) != 1 else ''}: {', '.join(shown)}."
    rest = [t for t in total if t not in shown]
    return (f"Shows {len(shown)} of {len(total)} checkpoints: {', '.join(shown)} "
            f"(not shown: {', '.join(rest)}; their numbers are in {elsewhere}).")


def figure_html(fig: Figure, title: str, caption: str, shown: Sequence[str], total: Sequence[str],
                elsewhere: str = "the tables") -> str:
    """The checked figure as ``<figure>``: inline PNG, alt text and caption (``caption`` is escaped HTML).

    ``shown``: the checkpoints the figure draws, out of ``total`` (all of the page's); the caption
    says which, and where the others' numbers are (``elsewhere``).
    """
    check_figure(fig)
    panels = describe_figure(fig)
    parts = []
    for p in panels:
        legend = ", ".join(_untex(t) for t in p["legend"]) if p["legend"] else f"colour bar: {_untex(p['colorbar'])}"
        parts.append(f"{_untex(p['title']) or 'panel'} (x: {_untex(p['x'])}; y: {_untex(p['y'])}; legend: {legend})")
    shown_s = shown_text(shown, total, elsewhere)
    alt = f"{title}. {shown_s} Panels: " + "; ".join(parts)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    items = "".join(f"<li>{esc(p)}</li>" for p in parts)
    return (f'<figure data-checkpoints="{esc("|".join(shown))}" data-shown="{len(shown)}" data-total="{len(total)}">'
            f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption><b>{esc(title)}.</b> <span class="shown">{esc(shown_s)}</span> {caption}'
            f'<ul class="panels">{items}</ul></figcaption></figure>')


# ---------------------------------------------------------------- checkpoints on an axis


def steps_axis(refs: Sequence[dict]) -> tuple[list[float], str, list[str] | None]:
    """x positions, axis label and tick labels (None: steps themselves) for checkpoints in order."""
    steps = [r["step"] for r in refs]
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        return steps, "training step", None
    return list(range(len(refs))), "checkpoint (in training order)", [r["label"] for r in refs]


def twins(groups: Sequence[Sequence[str]] | None) -> dict[str, list[str]]:
    """label → the other labels with the same weights."""
    out: dict[str, list[str]] = {}
    for g in groups or []:
        for label in g:
            out[label] = [x for x in g if x != label]
    return out


def tick_label(label: str, tw: dict[str, list[str]]) -> str:
    """A checkpoint label for an axis; a twin is marked '≡ other'."""
    return f"{label} ≡ {', '.join(tw[label])}" if label in tw else label
