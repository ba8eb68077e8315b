"""report.py: one self-contained HTML file; images inline, numbers as text, strings escaped."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from lingua_ray.report import fmt, fmt_ci, fmt_p, fmt_sd, render_report, select_checkpoints, write_report
from lingua_ray.results import ResultsError
from results_fixtures import make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = ["en", "<b>&x", 'q"z$1$']  # HTML specials, a quote, and a pair of $ matplotlib would read as math


class Page(HTMLParser):
    """Collects images, link targets, headings, visible text and tables (rows of cell texts)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.imgs, self.refs, self.h2, self.tags = [], [], [], set()
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._in_h2 = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href", "action", "poster"):
            if k in a:
                self.refs.append(a[k])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h2:
            self.h2[-1] += data

    def table(self, header: list[str], nth: int = 0, exact: bool = False) -> list[list[str]]:
        """The nth table whose header row starts with (or, if exact, is) ``header``."""
        found = [t for t in self.tables if t and (t[0] == header if exact else t[0][: len(header)] == header)]
        return found[nth]


@pytest.fixture(scope="module")
def with_ablation():
    d = make_results(K=3, S=5, L=4, n_checkpoints=2, languages=NASTY)
    return d, render_report(d)


@pytest.fixture(scope="module")
def without_ablation():
    d = make_results(K=3, S=5, L=4, n_checkpoints=2, ablation=False)
    return d, render_report(d)


def expected_images(d: dict) -> int:
    n = len(d["checkpoints"])
    per_ckpt = min(n, 3)  # block heatmaps: first, middle, last
    ablation = 0 if d["ablation"] is None else min(len(d["ablation"]["checkpoints"]), 3)
    return per_ckpt + 1 + 1 + (n > 1) + ablation  # + per-layer, key neurons, evolution, deactivation


@pytest.mark.parametrize("which", ["with_ablation", "without_ablation"])
def test_images_are_inline_pngs(which, request):
    d, text = request.getfixturevalue(which)
    page = Page(text)
    assert len(page.imgs) == expected_images(d)
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
    assert len(Page(path.read_text(encoding="utf-8")).imgs) == expected_images(d) == 3 + 1 + 1 + 1 + 2


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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_renders_in_headless_chromium(with_ablation, tmp_path):
    _, text = with_ablation
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    png = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000",
                    f"--screenshot={png}", page.as_uri()], check=True, timeout=120, capture_output=True)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
