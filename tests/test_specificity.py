"""specificity.py: the one home of own-minus-other arithmetic (ablation stage, results validator, report)."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import numpy as np
import pytest

from lingua_ray.specificity import (SPECIFICITY_FIELDS, AblationError, key_languages, mask_means, mean_sd,
                                    specificity_table, summarise_ablation)
from results_fixtures import make_ablation_checkpoint, naive_specificity


def _row(mask, lang, rep, ratios):
    return {"mask": mask, "language": lang, "repeat": rep, "n_neurons": 1,
            "ppl": {e: math.exp(v) for e, v in ratios.items()}, "log_ppl_ratio": ratios}


EV = ["a", "b", "c", "d"]
ROWS = [
    _row("none", None, None, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}),
    _row("key:a", "a", None, {"a": 3.0, "b": 1.0, "c": 0.0, "d": 5.0}),
    _row("random:a", "a", 1, {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.4}),
    _row("random:a", "a", 0, {"a": 0.2, "b": 0.0, "c": 0.4, "d": 0.2}),
    _row("key:b", "b", None, {"a": 0.0, "b": 2.0, "c": 4.0, "d": 2.0}),
    _row("random:b", "b", 0, {"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.0}),
]


def test_summarise_ablation_hand_example():
    s = summarise_ablation(ROWS, ["a", "b"], EV)
    assert list(s) == ["a", "b"] and all(tuple(v) == SPECIFICITY_FIELDS for v in s.values())
    a = s["a"]
    assert a["own_log_ratio"] == 3.0
    assert a["other_mean_log_ratio"] == pytest.approx(2.0)  # mean of 1, 0, 5
    assert a["other_median_log_ratio"] == pytest.approx(1.0)
    assert a["specificity"] == pytest.approx(1.0)  # own − mean, not − median
    assert a["random_own_log_ratio_mean"] == pytest.approx(0.35)
    assert a["random_own_log_ratio_sd"] == pytest.approx(math.sqrt(0.15**2 + 0.15**2))  # ddof = 1
    # random specificities: repeat 0: 0.2 − 0.2 = 0.0; repeat 1: 0.5 − 0.3 = 0.2
    assert a["random_specificity_mean"] == pytest.approx(0.1)
    assert a["random_specificity_sd"] == pytest.approx(math.sqrt(2 * 0.1**2))
    b = s["b"]
    assert b["other_mean_log_ratio"] == pytest.approx(2.0) and b["specificity"] == pytest.approx(0.0)
    assert b["random_own_log_ratio_mean"] == 1.0 and math.isnan(b["random_own_log_ratio_sd"])  # R = 1: no spread
    assert b["random_specificity_mean"] == pytest.approx(0.0) and math.isnan(b["random_specificity_sd"])


def test_summarise_ablation_refuses_bad_rows():
    assert issubclass(AblationError, ValueError)
    with pytest.raises(AblationError, match="not among the eval languages"):
        summarise_ablation(ROWS, ["a", "z"], EV)
    with pytest.raises(AblationError, match="one 'key:a' row"):
        summarise_ablation(ROWS + [ROWS[1]], ["a"], EV)
    with pytest.raises(AblationError, match="duplicate repeats"):
        summarise_ablation(ROWS + [ROWS[2]], ["a"], EV)


def test_undefined_entries_are_nan():
    rows = [_row("none", None, None, {"a": 0.0}), _row("key:a", "a", None, {"a": 2.0})]
    s = summarise_ablation(rows, ["a"], ["a"])["a"]  # one eval language, R = 0
    assert s["own_log_ratio"] == 2.0
    assert all(math.isnan(s[k]) for k in SPECIFICITY_FIELDS if k != "own_log_ratio")


def test_specificity_table_covers_evaluated_key_languages_in_row_order():
    rows = [ROWS[0], ROWS[4], ROWS[5], ROWS[1], ROWS[2], ROWS[3]]  # key:b before key:a
    assert key_languages(rows, EV) == ["b", "a"]
    assert key_languages(rows, ["a", "c"]) == ["a"]  # b has a key mask but no PPL in b
    assert list(specificity_table(rows, EV)) == ["b", "a"]
    assert specificity_table(rows, EV)["a"] == summarise_ablation(ROWS, ["a"], EV)["a"]


@pytest.mark.parametrize("R", [0, 1, 3])
@pytest.mark.parametrize("n_eval", [1, 2, 4])
def test_specificity_table_matches_naive_loops(R, n_eval):
    rng = np.random.default_rng(10 * R + n_eval)
    langs = ["x0", "x1", "x2", "x3"]
    cp = make_ablation_checkpoint("c", langs, langs[:n_eval], R, rng, 200)
    fast, slow = specificity_table(cp["rows"], cp["eval_languages"]), naive_specificity(cp["rows"], cp["eval_languages"])
    assert list(fast) == list(slow)
    for lang, want in slow.items():
        for k, v in want.items():
            got = fast[lang][k]
            assert (math.isnan(got) if v is None else math.isclose(got, v, rel_tol=1e-12, abs_tol=1e-12)), (lang, k)


def test_mean_sd():
    assert all(math.isnan(x) for x in mean_sd([]))
    m, sd = mean_sd([0.25])
    assert m == 0.25 and math.isnan(sd)
    xs = [0.1, 0.4, -0.2, 0.9]
    m, sd = mean_sd(xs)
    assert m == pytest.approx(statistics.fmean(xs)) and sd == pytest.approx(statistics.stdev(xs))


def test_mask_means_groups_repeats_in_the_given_order():
    out = mask_means(ROWS, ["a", "d"], ["none", "key:b", "random:b", "key:a", "random:a", "key:zz"])
    assert [(m, n) for m, n, _, _ in out] == [("none", 1), ("key:b", 1), ("random:b", 1), ("key:a", 1), ("random:a", 2)]
    _, _, mean, sd = out[4]
    assert mean == pytest.approx([0.35, 0.3]) and sd == pytest.approx([statistics.stdev([0.5, 0.2]),
                                                                         statistics.stdev([0.4, 0.2])])
    _, _, mean, sd = out[3]
    assert mean == [3.0, 5.0] and all(math.isnan(x) for x in sd)  # one row: its own values, no spread


def test_specificity_and_results_import_no_torch():
    code = "import sys, lingua_ray.specificity, lingua_ray.results; print(sorted({'torch', 'ray', 'zarr'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
