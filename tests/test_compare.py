"""workflows/compare.py and report_compare.py: several results.json (sizes) in one labelled page."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser import dump_dom
from lingua_ray.report_common import fmt, fmt_ci
from lingua_ray.report_compare import render_comparison, run_names
from lingua_ray.results import write_results
from results_fixtures import make_results
from test_report import Page

ROOT = Path(__file__).resolve().parents[1]


def _compare_main():
    spec = importlib.util.spec_from_file_location("compare_workflow", ROOT / "workflows" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three 'sizes': 4 layers x 3 checkpoints; 8 layers x 4 checkpoints with a duplicated step;
    an old (version 1) file with 6 layers and no evolution section."""
    tmp = tmp_path_factory.mktemp("runs")
    runs = [make_results(n_checkpoints=3, L=4, ablation=False),
            make_results(n_checkpoints=4, L=8, K=2, seed=3, identical=[[2, 3]], ablation=False),
            make_results(n_checkpoints=2, L=6, version=1, ablation=False)]
    paths = [write_results(d, tmp / name).parent for d, name in zip(runs, ("small", "medium", "old"))]
    out = tmp / "compare.html"
    rc = _compare_main()([str(paths[0]), str(paths[1] / "results.json"), str(paths[2]), "--out", str(out),
                          "--names", "small,medium,old"])
    assert rc == 0
    return runs, paths, out


def test_one_page_with_every_run(three_runs):
    runs, _, out = three_runs
    page = Page(out.read_text(encoding="utf-8"))
    table = page.table(["run", "model fingerprint", "L"])
    assert [r[0] for r in table[1:]] == ["small", "medium", "old"]
    assert [r[2] for r in table[1:]] == ["4", "8", "6"]
    assert table[3][-1] == "version 1, evolution computed here"
    figs = page.figures()
    assert len(figs) == 4
    every = [f"{n}: {r['label']}" for d, n in zip(runs, ("small", "medium", "old")) for r in d["grid"]["checkpoints"]]
    assert figs[0].attrs["data-checkpoints"].split("|") == every  # scores: every checkpoint of every run
    assert figs[1].attrs["data-checkpoints"] == "small: step3000|medium: step4000|old: step2000"  # last of each
    assert "not shown: small: step1000" in figs[1].find_all("span", cls="shown")[0].text
    assert "each run's own report" in figs[1].find_all("span", cls="shown")[0].text
    assert figs[2].attrs["data-checkpoints"].split("|") == every
    jac = figs[3].find_all("figcaption")[0].text
    assert "No key masks (no Jaccard) for: old." in jac and "old: step1000" in jac  # the old run is named as not shown
    for fig in figs:
        for li in fig.find_all("li"):
            assert "x: ;" not in li.text and "y: ;" not in li.text and "legend: " in li.text


def test_identical_checkpoints_are_flagged_per_run(three_runs):
    _, _, out = three_runs
    page = Page(out.read_text(encoding="utf-8"))
    banners = page.root.find_all("div", id="identical-checkpoints")
    assert len(banners) == 1
    assert "Identical checkpoints in medium." in banners[0].text and "step3000 = step4000" in banners[0].text
    alt = page.figures()[0].find_all("img")[0].attrs["alt"]
    assert "identical weights (≡)" in alt and "small, small: CI, medium, medium: CI, old, old: CI" in alt


def test_numbers_table_matches_the_results(three_runs):
    runs, _, out = three_runs
    rows = Page(out.read_text(encoding="utf-8")).table(["run", "checkpoint", "step", "LRDS [CI]"])[1:]
    assert len(rows) == 3 + 4 + 2
    medium = runs[1]
    r = rows[3 + 1]
    cp = medium["checkpoints"][1]
    ends = medium["evolution"]["edge_share_pooled"][1]["ends"]
    assert r[:3] == ["medium", "step2000", "2000"]
    assert r[3] == f"{fmt(cp['overall']['lrds']['value'])} {fmt_ci(cp['overall']['lrds']['ci'])}"
    assert r[5].startswith(f"{fmt(ends['share'], 3)} {fmt_ci(ends['ci'])} (uniform {ends['uniform']:.3g}")


def test_documented_command_and_one_line_errors(three_runs, tmp_path):
    _, paths, _ = three_runs
    out = tmp_path / "c.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "workflows/compare.py", str(paths[0]), str(paths[1]), "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out) and out.exists()
    assert "synthetic &lt;run&gt; &amp; co #2" in out.read_text(encoding="utf-8")  # same run.name: numbered
    bad = subprocess.run([sys.executable, "workflows/compare.py", str(tmp_path / "missing")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compare: ResultsError: ") and "missing" in lines[0]


def test_names_must_match_the_runs():
    d = make_results(ablation=False)
    assert run_names([d, d, d]) == ["synthetic <run> & co", "synthetic <run> & co #2", "synthetic <run> & co #3"]
    with pytest.raises(ValueError, match="2 names for 1 runs"):
        render_comparison([d], ["a", "b"])


def test_compare_page_in_headless_chromium(three_runs, tmp_path):
    _, _, out = three_runs
    dom = Page(dump_dom(out, tmp_path))
    figs = dom.figures()
    assert len(figs) == 4
    for fig in figs:
        w, h = map(int, fig.find_all("img")[0].attrs["data-natural"].split("x"))
        assert w > 100 and h > 100
        assert fig.find_all("figcaption")[0].attrs["data-box"] == "yes"
    assert "Identical checkpoints in medium." in dom.root.find_all("div", id="identical-checkpoints")[0].text
