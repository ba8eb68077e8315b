"""report.py: one self-contained HTML file; images inline, numbers as text, strings escaped; every figure
labelled and saying which checkpoints it shows; identical checkpoints flagged; checked in a real browser."""

from __future__ import annotations

import base64
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from browser import dump_dom, screenshot
from lingua_ray import report_evolution
from lingua_ray.report import fmt, fmt_ci, fmt_p, fmt_sd, render_report, select_checkpoints, write_report
from lingua_ray.report_common import FigureError, check_figure, figure, mark_signed, zero_line
from lingua_ray.report_criteria import criteria_markdown, specificity_by_criterion
from lingua_ray.results import ResultsError, normalize_results, write_results
from results_fixtures import make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = ["en", "<b>&x", 'q"z$1$']  # HTML specials, a quote, and a pair of $ matplotlib would read as math
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base", "embed", "param"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []
        self.parts: list = []  # str and Node, in order

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    def find_all(self, tag: str | None = None, **attrs) -> list["Node"]:
        out = []
        for c in self.children:
            if (tag is None or c.tag == tag) and all(
                    (v in c.attrs.get("class", "").split()) if k == "cls" else c.attrs.get(k) == v
                    for k, v in attrs.items()):
                out.append(c)
            out += c.find_all(tag, **attrs)
        return out


class Page(HTMLParser):
    """A small DOM (Node tree) plus images, link targets, headings, visible text and tables."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self._cur = self.root
        self.imgs, self.refs, self.tags = [], [], set()
        self.text: list[str] = []
        self.feed(text)
        self.close()
        self.h2 = [n.text for n in self.root.find_all("h2")]
        self.tables = [[[c.text.strip() for c in tr.children if c.tag in ("td", "th")] for tr in t.find_all("tr")]
                       for t in self.root.find_all("table")]

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        self.tags.add(tag)
        node = Node(tag, a, self._cur)
        self._cur.children.append(node)
        self._cur.parts.append(node)
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href", "action", "poster"):
            if k in a:
                self.refs.append(a[k])
        if tag not in VOID:
            self._cur = node

    def handle_endtag(self, tag):
        n = self._cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self._cur = n.parent

    def handle_data(self, data):
        self.text.append(data)
        self._cur.parts.append(data)

    def table(self, header: list[str], nth: int = 0, exact: bool = False) -> list[list[str]]:
        """The nth table whose header row starts with (or, if exact, is) ``header``."""
        found = [t for t in self.tables if t and (t[0] == header if exact else t[0][: len(header)] == header)]
        return found[nth]

    def figures(self) -> list[Node]:
        return self.root.find_all("figure")


@pytest.fixture(scope="module")
def with_ablation():
    d = make_results(K=3, S=5, L=4, n_checkpoints=2, languages=NASTY)
    return d, render_report(d)


@pytest.fixture(scope="module")
def without_ablation():
    d = make_results(K=3, S=5, L=4, n_checkpoints=2, ablation=False)
    return d, render_report(d)


@pytest.fixture(scope="module")
def identical4():
    """Four checkpoints, the second and fourth with the same weights (the BLOOM duplicate-step case)."""
    d = make_results(K=3, S=5, L=4, n_checkpoints=4, ablation=False, identical=[[1, 3]])
    return d, render_report(d)


@pytest.fixture(scope="module")
def version1():
    d = make_results(K=2, S=4, L=5, n_checkpoints=3, ablation=False, version=1)
    return d, render_report(d)


def expected_images(d: dict) -> int:
    n = len(d["checkpoints"])
    per_ckpt = min(n, 3)  # block heatmaps: first, middle, last
    ablation = 0 if d["ablation"] is None else min(len(d["ablation"]["checkpoints"]), 3)
    with_jaccard = "evolution" in d and d["evolution"]["jaccard"] is not None
    # + per-layer lines, key neurons; across checkpoints: scores, per-layer heatmaps, key heatmaps, ends, Jaccard
    return per_ckpt + 1 + 1 + (4 + with_jaccard) * (n > 1) + ablation


@pytest.mark.parametrize("which", ["with_ablation", "without_ablation", "identical4", "version1"])
def test_images_are_inline_pngs(which, request):
    d, text = request.getfixturevalue(which)
    page = Page(text)
    assert len(page.imgs) == expected_images(d) == len(page.figures())
    for img in page.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
        assert img.get("alt")


@pytest.mark.parametrize("which", ["with_ablation", "without_ablation"])
def test_self_contained(which, request):
    _, text = request.getfixturevalue(which)
    page = Page(text)
    assert not [r for r in page.refs if re.match(r"\s*(https?:)?//", r, re.I)]
    assert all(r.startswith("data:") for r in page.refs)
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert "url(" not in text and "@import" not in text


def test_headline_numbers_are_printed(with_ablation):
    d, text = with_ablation
    page = Page(text)
    table = page.table(["checkpoint", "step", "LRDS"])
    assert len(table) == 1 + len(d["checkpoints"])
    for row, cp in zip(table[1:], d["checkpoints"]):
        want = [cp["label"], str(cp["step"])]
        for part in ("overall", "overall_balanced"):
            for m in ("lrds", "sads"):
                s = cp[part][m]
                want += [fmt(s["value"]), fmt_ci(s["ci"]), fmt_p(s["p_value"])]
        assert row == want
    assert "—" in table[1]  # the balanced SADS of the fixture has no interval


def test_figure_numbers_are_in_tables(with_ablation):
    d, text = with_ablation
    page = Page(text)
    langs = d["grid"]["languages"]
    cp = d["checkpoints"][0]
    B = page.table([""] + langs, 0)  # the first such table is B of the first checkpoint
    assert [r[1:] for r in B[1:]] == [[fmt(v) for v in row] for row in cp["language_block_means"]]
    D = page.table(["", "0", "1"], 0)
    assert [r[1:] for r in D[1:]] == [[fmt(v) for v in row] for row in cp["meaning_block_means"]]
    layers = page.table(["layer", "LRDS"], 1)  # second checkpoint
    pl = d["checkpoints"][1]["per_layer"]
    assert [r[1] for r in layers[1:]] == [fmt(s["value"]) for s in pl["lrds"]]
    assert [r[-1] for r in layers[1:]] == [fmt(x) for x in pl["norm_share"]]
    counts = page.table(["language", "0"], 1)
    kn = d["checkpoints"][1]["key_neurons"]
    assert counts[1:] == [[l] + [str(c) for c in kn["counts"][l]] + [str(kn["total"][l])] for l in langs]
    for i, acp in enumerate(d["ablation"]["checkpoints"]):
        spec = page.table(["language", "own"], i)
        assert [r[0] for r in spec[1:]] == list(acp["specificity"])
        for r, s in zip(spec[1:], acp["specificity"].values()):
            assert r[1:] == [fmt(s["own_log_ratio"]), fmt(s["other_mean_log_ratio"]), fmt(s["other_median_log_ratio"]),
                             fmt(s["specificity"]), fmt_sd(s["random_own_log_ratio_mean"], s["random_own_log_ratio_sd"]),
                             fmt_sd(s["random_specificity_mean"], s["random_specificity_sd"])]
        matrix = page.table(["mask"] + acp["eval_languages"], exact=True)
        key_row = next(r for r in matrix if r[0] == f"key:{langs[0]}")
        src = next(r for r in acp["rows"] if r["mask"] == f"key:{langs[0]}")
        assert key_row[1:] == [fmt(src["log_ppl_ratio"][e]) for e in acp["eval_languages"]]


def test_evolution_numbers_are_in_tables(identical4):
    d, text = identical4
    page = Page(text)
    ev, refs = d["evolution"], d["grid"]["checkpoints"]
    pooled = page.table(["checkpoint", "language", "key neurons"], 0)
    assert [r[:3] for r in pooled[1:]] == [[r["label"], "all languages", str(e["n_key"])]
                                           for r, e in zip(refs, ev["edge_share_pooled"])]
    for row, e in zip(pooled[1:], ev["edge_share_pooled"]):
        assert row[3:] == [x for p in ("first", "last", "ends")
                           for x in (fmt(e[p]["share"], 3), fmt_ci(e[p]["ci"]), fmt_p(e[p]["p_value"]))]
    assert "uniform 0.25" in pooled[0][3] and "uniform 0.5" in pooled[0][9]  # L = 4, k = 1
    lrds = page.table(["layer", "step1000"], 0)
    assert [r[1:] for r in lrds[1:]] == [[fmt(v) for v in row] for row in ev["per_layer_lrds"]]
    assert lrds[0][2] == "step2000 ≡ step4000"  # the twin is marked in the column header
    jac = page.table(["checkpoints"], 0)
    assert jac[1][0] == "step1000 → step2000 ≡ step4000"
    assert jac[2][1] == f"{fmt(ev['jaccard']['l0'][1], 3)} ({fmt(ev['jaccard_chance']['l0'][1], 3)})"


def _caption(fig) -> str:
    return fig.find_all("figcaption")[0].text


def test_every_figure_says_which_checkpoints_it_shows(identical4):
    d, text = identical4
    labels = [r["label"] for r in d["grid"]["checkpoints"]]
    figs = Page(text).figures()
    for fig in figs:
        shown = fig.attrs["data-checkpoints"].split("|")
        assert fig.attrs["data-total"] == "4" and int(fig.attrs["data-shown"]) == len(shown)
        span = fig.find_all("span", cls="shown")[0].text
        if shown == labels:
            assert span == f"Shows all 4 checkpoints: {', '.join(labels)}."
        else:
            rest = [x for x in labels if x not in shown]
            assert span.startswith(f"Shows {len(shown)} of 4 checkpoints: {', '.join(shown)} (not shown: "
                                   f"{', '.join(rest)};")
    shown_sets = [f.attrs["data-checkpoints"] for f in figs]
    assert shown_sets[:3] == ["step1000", "step3000", "step4000"]  # block means: first, middle, last
    assert shown_sets[3] == "|".join(labels)  # per-layer lines: up to 5 checkpoints, here all
    assert shown_sets[4] == "step1000|step3000|step4000"  # key-neuron heatmaps
    assert shown_sets[5:] == ["|".join(labels)] * 5  # everything across checkpoints shows every checkpoint


@pytest.mark.parametrize("which", ["with_ablation", "identical4", "version1"])
def test_every_panel_has_axis_labels_and_a_legend(which, request):
    _, text = request.getfixturevalue(which)
    for fig in Page(text).figures():
        panels = [li.text for li in fig.find_all("li")]
        assert panels, _caption(fig)
        for p in panels:
            x, y, legend = re.fullmatch(r".*\(x: (.*); y: (.*); legend: (.*)\)", p).groups()
            assert x and y and legend, p
        assert fig.find_all("img")[0].attrs["alt"].count("legend: ") == len(panels)


def test_evolution_figures_name_their_legends(identical4):
    _, text = identical4
    alts = {f.find_all("figcaption")[0].find_all("b")[0].text: f.find_all("img")[0].attrs["alt"]
            for f in Page(text).figures()}
    scores = alts["LRDS and SADS across checkpoints."]
    assert "legend: paper, paper: 95% CI, balanced, balanced: 95% CI, identical weights (≡)" in scores
    assert "y: LRDS (cosine difference)" in scores and "y: SADS (cosine difference)" in scores
    assert "x: training step" in scores
    heat = alts["Per-layer LRDS and SADS across checkpoints."]
    assert "colour bar: LRDS (cosine difference)" in heat and "colour bar: SADS (cosine difference)" in heat
    ends = alts["Key neurons in the first and last layers."]
    assert "first 1 layer" in ends and "uniform spread (0.25)" in ends and "uniform spread (0.5)" in ends
    assert "all: 95% Wilson CI" in ends and "l0, l1, l2, all languages" in ends
    assert "colour bar: key neurons" in alts["Key neurons per layer across checkpoints."]
    jac = alts["Key-set overlap between consecutive checkpoints."]
    assert "y: Jaccard overlap of key sets" in jac and "chance (same per-layer sizes)" in jac


def test_identical_checkpoints_banner_and_marks(identical4, without_ablation, version1):
    page = Page(identical4[1])
    banner = page.root.find_all("div", id="identical-checkpoints")
    assert len(banner) == 1 and banner[0].attrs["role"] == "alert"
    assert "Identical checkpoints." in banner[0].text and "step2000 = step4000" in banner[0].text
    header = dict(zip([n.text for n in page.root.find_all("dt")], [n.text for n in page.root.find_all("dd")]))
    assert header["identical weights"] == "step2000 ≡ step4000 (see the banner)"
    assert "Checkpoints marked ≡ have the same weights." in _caption(page.figures()[5])
    for text, want in ((without_ablation[1], "none: every checkpoint's weights hash differently"),
                       (version1[1], "not checked (this results.json has no identical_checkpoints)")):
        p = Page(text)
        assert not p.root.find_all("div", id="identical-checkpoints")
        header = dict(zip([n.text for n in p.root.find_all("dt")], [n.text for n in p.root.find_all("dd")]))
        assert header["identical weights"] == want


def test_version_1_results_get_the_evolution_computed_without_jaccard(version1):
    d, text = version1
    page = Page(text)
    assert "Across checkpoints" in page.h2
    assert page.root.find_all("p", id="evolution-computed") and page.root.find_all("p", id="jaccard-missing")
    assert "Key-set overlap between consecutive checkpoints." not in "".join(_caption(f) for f in page.figures())
    assert "(results.json version 1)" in "".join(page.text)
    pooled = page.table(["checkpoint", "language", "key neurons"], 0)
    assert [r[2] for r in pooled[1:]] == [str(sum(cp["key_neurons"]["total"].values())) for cp in d["checkpoints"]]


def test_strings_from_results_are_escaped(with_ablation):
    d, text = with_ablation
    assert "<b>&x" not in text and "&lt;b&gt;&amp;x" in text
    assert "<run>" not in text and "synthetic &lt;run&gt; &amp; co" in text
    assert 'q"z$1$' not in text and "q&quot;z$1$" in text
    page = Page(text)
    joined = "".join(page.text)
    assert "<b>&x" in joined and 'q"z$1$' in joined and "synthetic <run> & co" in joined


def test_ablation_section_iff_ablation(with_ablation, without_ablation):
    assert "Deactivation" in Page(with_ablation[1]).h2
    assert "Deactivation" not in Page(without_ablation[1]).h2
    assert "Across checkpoints" in Page(without_ablation[1]).h2


def test_single_checkpoint_and_large_S(tmp_path):
    d = make_results(K=2, S=130, L=2, n_checkpoints=1, ablation=False)
    path = write_report(d, tmp_path)  # a folder gets report.html
    assert path == tmp_path / "report.html"
    assert os.listdir(tmp_path) == ["report.html"]  # no temporary file left
    page = Page(path.read_text(encoding="utf-8"))
    assert "Across checkpoints" not in page.h2 and len(page.imgs) == expected_images(d) == 3
    D = page.table(["unit s", "D[s, s]"])
    assert len(D) == 1 + 130
    assert D[1 + 7][1] == fmt(d["checkpoints"][0]["meaning_block_means"][7][7])


def test_size_stays_modest_for_a_realistic_grid(tmp_path):
    d = make_results(K=9, S=60, L=18, n_checkpoints=3)
    path = write_report(d, tmp_path / "r.html")
    assert path.stat().st_size < 3_000_000
    assert len(Page(path.read_text(encoding="utf-8")).imgs) == expected_images(d) == 3 + 1 + 1 + 5 + 2


def test_invalid_results_are_refused():
    d = make_results(ablation=False)
    d["grid"]["n_layers"] = 5
    with pytest.raises(ResultsError, match=r"checkpoints\[0\]\.per_layer\.lrds"):
        render_report(d)


@pytest.mark.parametrize("n", range(1, 12))
def test_select_checkpoints(n):
    sel = select_checkpoints(n)
    assert sel == sorted(set(sel)) and sel[0] == 0 and sel[-1] == n - 1
    assert len(sel) == min(n, 3)


def test_formatting_of_undefined_values():
    assert fmt(None) == fmt_ci(None) == fmt_p(None) == "—"
    assert fmt(0.123456) == "0.1235" and fmt_ci([0.1, 0.2]) == "[0.1000, 0.2000]"
    assert fmt_sd(0.5, None) == "0.5000" and fmt_sd(0.5, 0.25) == "0.5000 ± 0.2500"


# ---------------------------------------------------------------- the labelling rules themselves


def _panel(signed=False, zero=True, legend=True, ylabel="y", line_label="a"):
    fig = figure(3, 2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, -1], label=line_label)
    ax.set_xlabel("x")
    ax.set_ylabel(ylabel)
    if zero:
        zero_line(ax)
    if signed:
        mark_signed(ax)
    if legend:
        ax.legend()
    return fig


@pytest.mark.parametrize("kw,match", [
    ({"ylabel": ""}, "lacks an axis label"),
    ({"legend": False}, "neither a legend nor a colour bar"),
    ({"line_label": "_hidden"}, "unlabelled line"),
    ({"signed": True, "zero": False}, "without a zero line"),
])
@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_check_figure_refuses(kw, match):
    with pytest.raises(FigureError, match=match):
        check_figure(_panel(**kw))


def test_check_figure_accepts_labelled_panels_and_centred_heatmaps():
    check_figure(_panel(signed=True))
    fig = figure(3, 2)
    ax = fig.subplots()
    im = ax.imshow(np.array([[-1.0, 2.0]]), cmap="RdBu_r", vmin=-2, vmax=2)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer")
    mark_signed(ax)
    cb = fig.colorbar(im, ax=ax)
    with pytest.raises(FigureError, match="colour bar has no label"):
        check_figure(fig)
    cb.set_label("LRDS")
    check_figure(fig)
    im.set_clim(-1, 2)  # no longer centred on 0
    with pytest.raises(FigureError, match="zero line or a scale centred on 0"):
        check_figure(fig)


def test_a_missing_zero_line_in_the_evolution_figure_is_caught(identical4, monkeypatch):
    monkeypatch.setattr(report_evolution, "zero_line", lambda ax, horizontal=True: None)
    with pytest.raises(FigureError, match="LRDS across checkpoints.*zero line"):
        report_evolution.evolution_section(normalize_results(identical4[0], nan_to_null=True))


# ---------------------------------------------------------------- in a real browser


def test_renders_in_headless_chromium(with_ablation, tmp_path):
    _, text = with_ablation
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    data = screenshot(page, tmp_path / "shot.png", tmp_path)
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_browser_dom_has_banner_figures_and_captions(identical4, tmp_path):
    d, text = identical4
    path = tmp_path / "report.html"
    path.write_text(text, encoding="utf-8")
    dom = Page(dump_dom(path, tmp_path))
    banner = dom.root.find_all("div", id="identical-checkpoints")
    assert len(banner) == 1 and "step2000 = step4000" in banner[0].text
    figs = dom.figures()
    assert len(figs) == expected_images(d)
    for fig in figs:
        img = fig.find_all("img")[0]
        w, h = map(int, img.attrs["data-natural"].split("x"))
        assert w > 100 and h > 100, (img.attrs["alt"][:80], w, h)  # the browser decoded the PNG
        cap = fig.find_all("figcaption")[0]
        assert cap.attrs["data-box"] == "yes" and "Shows " in cap.text and "legend: " in cap.text
    across = [f for f in figs if f.attrs["data-checkpoints"] == "step1000|step2000|step3000|step4000"]
    assert len(across) == 6  # per-layer lines + the five figures across checkpoints
    assert "Across checkpoints" in dom.h2


# ---------------------------------------------------------------- criteria side by side (issue 12)


@pytest.fixture(scope="module")
def with_criteria():
    d = make_results(K=4, S=6, L=3, n_checkpoints=2, version=3, criteria=True)
    return d, render_report(d)


def _section(dom: "Page") -> Node:
    found = dom.root.find_all("section", id="criteria-side-by-side")
    assert len(found) == 1, "no criteria section"
    return found[0]


def _rows(node: Node, cls: str) -> list[list[str]]:
    tables = node.find_all("table", cls=cls)
    assert tables, f"no table of class {cls}"
    return [[c.text.strip() for c in tr.children if c.tag in ("td", "th")] for tr in tables[-1].find_all("tr")]


def _check_criteria_section(d: dict, dom: "Page") -> None:
    sec = _section(dom)
    assert "Criteria side by side" in dom.h2
    names, L = d["criteria"]["names"], d["grid"]["n_layers"]
    last = d["criteria"]["checkpoints"][-1]
    counts = _rows(sec, "criteria-counts")
    assert counts[0][:1 + L] == ["criterion"] + [str(k) for k in range(L)]
    for row, n in zip(counts[1:], names):  # counts per layer, summed over languages
        want = np.sum(list(last["criteria"][n]["counts"].values()), axis=0)
        assert row[0] == n and row[1:1 + L] == [str(int(x)) for x in want]
        assert row[1 + L] == str(sum(last["criteria"][n]["total"].values()))
    overlap = _rows(sec, "criteria-overlap")
    assert overlap[0] == [""] + names
    for i, row in enumerate(overlap[1:]):
        assert row[1:] == [fmt(v, 3) for v in last["overlap"]["overall"][i]]
    spec = _rows(sec, "criteria-specificity")
    assert [r[0] for r in spec[1:]] == names  # every ablated criterion, against its own control
    answer = sec.find_all("p", id="most-specific-criterion")
    assert len(answer) == 1 and "average_precision" in answer[0].text
    got = {r[0]: r for r in spec[1:]}
    for s in specificity_by_criterion(d, last["label"]):  # per 1,000 neurons: a naive recomputation
        cp = next(c for c in d["criteria"]["ablation"][s["criterion"]]["checkpoints"] if c["label"] == last["label"])
        sizes = {r["language"]: r["n_neurons"] for r in cp["rows"] if r["mask"].startswith("key:")}
        vals = [1000 * (v["specificity"] - v["random_specificity_mean"]) / sizes[lang]
                for lang, v in cp["specificity"].items() if sizes[lang]]
        assert got[s["criterion"]][-1] == fmt(sum(vals) / len(vals), 3)
    per_neuron = sec.find_all("p", id="most-specific-per-neuron")
    assert len(per_neuron) == 1 and max(spec[1:], key=lambda r: float(r[-1]))[0] in per_neuron[0].text
    align = _rows(sec, "alignment-per-layer")
    assert align[0][:4] == ["layer", "LRDS", "SADS", "retrieval"]
    cp, al = d["checkpoints"][-1], d["alignment"]["checkpoints"][-1]
    assert len(align) == 1 + L + 1 and align[-1][0] == "all"
    for k in range(L):  # alignment beside LRDS and SADS of the same layer
        assert align[1 + k][1] == fmt(cp["per_layer"]["lrds"][k]["value"])
        assert align[1 + k][3] == fmt(al["per_layer"][k]["retrieval"]["value"], 3)
    assert _rows(sec, "criteria-stability")[0][0] == "criterion"


def test_criteria_section_numbers_are_the_results(with_criteria):
    d, text = with_criteria
    _check_criteria_section(d, Page(text))


def test_criteria_table_prints_the_section_numbers(with_criteria, tmp_path):
    """workflows/criteria_table.py: the same numbers as Markdown, from the written results.json."""
    import subprocess
    import sys

    d, _ = with_criteria
    write_results(d, tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    ok = subprocess.run([sys.executable, "workflows/criteria_table.py", str(tmp_path)], cwd=root, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == criteria_markdown(normalize_results(d, nan_to_null=True)).strip()
    last = d["criteria"]["checkpoints"][-1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in ok.stdout.split("Jaccard")[0].splitlines() if line.startswith("| ") and "---" not in line}
    for n in d["criteria"]["names"]:  # set sizes: total and per language, as in results.json
        assert rows[n][0] == f"{sum(last['criteria'][n]['total'].values()):,}"
        assert rows[n][2:] == [f"{last['criteria'][n]['total'][lang]:,}" for lang in d["grid"]["languages"]]
    for s in specificity_by_criterion(d, last["label"]):
        assert f"| {s['criterion']} | {s['n_neurons']:,} | {s['specificity']:.3f} |" in ok.stdout
    n_layers = d["grid"]["n_layers"]
    assert ok.stdout.split("Alignment per layer")[1].count("\n| ") == 1 + n_layers + 1  # head, layers, all
    bad = subprocess.run([sys.executable, "workflows/criteria_table.py", str(tmp_path / "missing")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("criteria_table: ResultsError")


def test_no_criteria_section_without_criteria(with_ablation):
    assert not Page(with_ablation[1]).root.find_all("section", id="criteria-side-by-side")


def test_browser_dom_has_the_criteria_section(with_criteria, tmp_path):
    d, text = with_criteria
    path = tmp_path / "report.html"
    path.write_text(text, encoding="utf-8")
    dom = Page(dump_dom(path, tmp_path))
    _check_criteria_section(d, dom)
    figs = _section(dom).find_all("figure")
    assert len(figs) == 1
    w, h = map(int, figs[0].find_all("img")[0].attrs["data-natural"].split("x"))
    assert w > 100 and h > 100 and figs[0].find_all("figcaption")[0].attrs["data-box"] == "yes"
