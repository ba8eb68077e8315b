"""Key-neuron criteria against naive loops written from the papers and their released scripts."""

import math

import numpy as np
import pytest

from lingua_ray import criteria as cr
from lingua_ray import metrics
from lingua_ray.config import ConfigError

# --------------------------------------------------------------------------- naive references


def naive_ap(scores, positive):
    """Σ_n (R_n − R_{n−1}) P_n over the distinct thresholds, highest first (Kojima via sklearn)."""
    n_pos = sum(positive)
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores), reverse=True):
        tp = sum(1 for v, y in zip(scores, positive) if v >= thr and y)
        taken = sum(1 for v in scores if v >= thr)
        recall = tp / n_pos
        ap += (recall - prev_recall) * (tp / taken)
        prev_recall = recall
    return ap


def kth(values, ratio):
    ordered = sorted(float(v) for v in np.ravel(values))
    return ordered[round(len(ordered) * ratio) - 1]


def naive_lape(p, top_rate=0.01, filter_rate=0.95, bar_ratio=0.95):
    """identify.py, one neuron at a time."""
    K, L, F = p.shape
    filt, bar = kth(p, filter_rate), kth(p, bar_ratio)
    entropy = {}
    for layer in range(L):
        for k in range(F):
            col = [float(p[l, layer, k]) for l in range(K)]
            total = sum(col)
            h = 0.0
            for v in col:
                q = v / total if total > 0 else 0.0
                if q > 0:
                    h -= q * math.log(q)
            entropy[layer, k] = h if any(v > filt for v in col) else math.inf
    chosen = sorted(entropy, key=lambda lk: (entropy[lk], lk))[: round(L * F * top_rate)]
    mask = np.zeros(p.shape, dtype=bool)
    for layer, k in chosen:
        for l in range(K):
            mask[l, layer, k] = p[l, layer, k] > bar
    return mask


def naive_lna(p, lam, top_rate=0.01, bar_ratio=0.95):
    """NJUNLP identify.py ActivationAnalyzer.run, one neuron at a time."""
    K, L, F = p.shape
    norm_max = sum(1 / i for i in range(1, K + 1)) / K
    score = {}
    for layer in range(L):
        for k in range(F):
            col = [float(p[l, layer, k]) for l in range(K)]
            total = sum(col)
            probs = [v / total for v in col] if total > 0 else [1 / K] * K
            probs = [max(v, 1e-12) for v in probs]
            probs = [v / sum(probs) for v in probs]
            h = -sum(v * math.log(v + 1e-30) for v in probs) / math.log(K)
            score[layer, k] = h - max(col) * lam / norm_max
    chosen = sorted(score, key=lambda lk: (score[lk], lk))[: round(L * F * top_rate)]
    bar = kth(p, bar_ratio)
    mask = np.zeros(p.shape, dtype=bool)
    for layer, k in chosen:
        for l in range(K):
            mask[l, layer, k] = p[l, layer, k] > bar
    return mask


def naive_autosweep(p, top_rate, bar_ratio, lo=0.0, hi=0.2, eps=1e-3):
    """autosweep.py with appear[K] (neurons in all K languages) in place of the hard-coded appear[10]."""
    K = p.shape[0]

    def ok(lam):
        return int((naive_lna(p, lam, top_rate, bar_ratio).sum(0) == K).sum()) == 0

    best = None
    if ok(lo):
        best = lo
    if ok(hi):
        best = hi
    it = 0
    while hi - lo > eps and it < 64:
        it += 1
        mid = (lo + hi) / 2
        if ok(mid):
            best, lo = mid, mid
        else:
            hi = mid
    return best


# --------------------------------------------------------------------------- data


def random_inputs(K=5, S=8, L=3, F=20, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(K, S, L, F))
    frac = rng.uniform(0, 1, size=(K, S, L, F)) ** 3
    frac[:, :, 0, :3] = 0.0  # never active: 0/0 in p̃
    n_tokens = rng.integers(1, 40, size=(K, S))
    return mean, frac, n_tokens


def planted(K=6, S=24, L=3, F=40, lang=2, where=(1, 7), seed=1):
    """Random statistics with one neuron planted specific to language ``lang``."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(K, S, L, F))
    frac = rng.uniform(0.2, 0.5, size=(K, S, L, F))
    layer, k = where
    mean[:, :, layer, k] = rng.normal(0, 0.1, size=(K, S))
    mean[lang, :, layer, k] = 8 + rng.normal(0, 0.1, size=S)
    frac[:, :, layer, k] = 0.01
    frac[lang, :, layer, k] = 0.95
    return cr.CriterionInputs.from_arrays(mean, frac, rng.integers(5, 50, size=(K, S)))


# --------------------------------------------------------------------------- statistics


def test_activation_probs_are_token_weighted():
    mean, frac, n = random_inputs()
    p = cr.activation_probs(cr.CriterionInputs.from_arrays(mean, frac, n))
    K, S, L, F = frac.shape
    for l in range(K):
        for layer in range(L):
            for k in range(F):
                want = sum(n[l, s] * frac[l, s, layer, k] for s in range(S)) / n[l].sum()
                assert p[l, layer, k] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_average_precision_matches_naive_and_blocks_do_not_matter():
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(size=(3, 6, 11)), 1)  # rounding makes ties
    a[:, :, 0] = 0.5  # a constant neuron: everything tied
    ap = cr.average_precision_layer(a)
    X = a.reshape(-1, a.shape[-1])
    lang = np.repeat(np.arange(3), 6)
    for l in range(3):
        for k in range(a.shape[-1]):
            assert ap[l, k] == pytest.approx(naive_ap(X[:, k].tolist(), (lang == l).tolist()), abs=1e-12)
    np.testing.assert_array_equal(cr.average_precision_layer(a, max_bytes=1), ap)


def test_average_precision_equals_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    a = rng.normal(size=(4, 9, 25))
    a[..., :10] = np.round(a[..., :10])  # heavy ties in some neurons
    ap = cr.average_precision_layer(a, max_bytes=4096)
    X, lang = a.reshape(36, 25), np.repeat(np.arange(4), 9)
    for l in range(4):
        for k in range(25):
            assert ap[l, k] == pytest.approx(sk.average_precision_score(lang == l, X[:, k]), abs=1e-12)


def test_zscore_from_reader_equals_reducer_sums():
    mean, _, _ = random_inputs(K=6)
    K, S, L, F = mean.shape
    inp = cr.CriterionInputs.from_arrays(mean)
    grams = np.stack([mean[:, :, i].reshape(K * S, F) @ mean[:, :, i].reshape(K * S, F).T for i in range(L)])
    norms = metrics.unit_norms(grams, K, S)
    sums = [metrics.neuron_sums(mean[:, :, i], norms) for i in range(L)]
    sx, sx2 = (np.stack([s[j] for s in sums], axis=1) for j in (0, 1))
    got = cr.select("zscore", inp, {"tau": 1.5})
    want = metrics.key_neurons(sx, sx2, S, tau=1.5)
    np.testing.assert_allclose(got.score, want["z"], atol=1e-9)
    np.testing.assert_array_equal(got.mask, want["mask"])
    given = cr.CriterionInputs(K, S, L, F, sum_x=sx, sum_x2=sx2)
    np.testing.assert_array_equal(cr.select("zscore", given, {"tau": 1.5}).mask, want["mask"])
    top = cr.select("zscore", given, {"mode": "top_fraction", "top_fraction": 0.1})
    np.testing.assert_array_equal(top.mask, metrics.top_fraction_masks(want["z"], 0.1))


# --------------------------------------------------------------------------- LAPE and LNA


@pytest.mark.parametrize("settings", [{}, {"top_rate": 0.2}, {"top_rate": 0.6, "filter_rate": 0.9,
                                                                  "activation_bar_ratio": 0.5}])
def test_lape_matches_identify_py(settings):
    mean, frac, n = random_inputs()
    inp = cr.CriterionInputs.from_arrays(mean, frac, n)
    p = cr.activation_probs(inp)
    p[:, 2, 5:8] = p[:, 2, 4:5]  # identical neurons: tied entropies go to the lower index
    inp = cr.CriterionInputs(*p.shape[:1], 8, *p.shape[1:], act_prob=p)
    s = cr.LapeSettings(**settings)
    got = cr.select("lape", inp, s)
    np.testing.assert_array_equal(got.mask, naive_lape(p, s.top_rate, s.filter_rate, s.activation_bar_ratio))
    assert got.info["n_selected"] == round(p[0].size * s.top_rate)


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.3])
def test_lna_fixed_lambda_matches_identify(lam):
    mean, frac, n = random_inputs(K=4)
    inp = cr.CriterionInputs.from_arrays(mean, frac, n)
    got = cr.select("lna", inp, {"lam": lam, "top_rate": 0.3})
    np.testing.assert_array_equal(got.mask, naive_lna(cr.activation_probs(inp), lam, 0.3))


def test_lna_entropy_clamps_like_the_release():
    # calc_entropy clamps p̃ at 1e-12 and renormalises: [1, 0, 0] has H ≈ 5.7e-11, not 0; a neuron
    # never active gets the uniform p̃ (H = ln K), not 0/0
    p = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])[:, None, :]
    Hn = cr._lna_parts(p)[0][0]
    q = np.array([1.0, 1e-12, 1e-12]) / (1 + 2e-12)
    want = -(q * np.log(q + 1e-30)).sum() / math.log(3)
    np.testing.assert_allclose(Hn, [want, 1.0], rtol=1e-4)  # ln near 1 is good to ~1e-5 only


def test_lna_lambda_search_matches_autosweep():
    # 10 mildly specific neurons (score 0.92 - 0.98 λ), 5 active in every language (1 - 1.55 λ) and
    # 15 quiet ones: above λ ≈ 0.15 the universal ones are kept, and they belong to all K languages.
    rng = np.random.default_rng(7)
    K, L, F = 3, 1, 30
    p = rng.uniform(0.05, 0.1, size=(K, L, F))
    for k in range(10):
        p[:, 0, k] = np.roll([0.6, 0.25, 0.25], k) + rng.normal(0, 0.005, size=K)
    p[:, 0, 10:15] = 0.95 + rng.normal(0, 0.005, size=(K, 5))
    inp = cr.CriterionInputs(K, 4, L, F, act_prob=p)
    got = cr.select("lna", inp, {"top_rate": 1 / 3, "activation_bar_ratio": 0.75})
    want = naive_autosweep(p, 1 / 3, 0.75)
    assert want is not None and 0.1 < want < 0.19  # the boundary is inside the bracket
    assert got.info["lam"] == want
    np.testing.assert_array_equal(got.mask, naive_lna(p, want, 1 / 3, 0.75))
    assert (got.mask.sum(0) < K).all() and got.mask[:, 0, :10].any()
    assert (naive_lna(p, want + 2e-3, 1 / 3, 0.75).sum(0) == K).any()  # just above it, one is in all K


def test_lna_without_any_valid_lambda_is_an_error():
    p = np.full((3, 1, 10), 0.5)
    p[:, 0, 0] = 0.9  # the one neuron kept is high in every language, whatever λ
    with pytest.raises(ValueError, match="no λ"):
        cr.select("lna", cr.CriterionInputs(3, 2, 1, 10, act_prob=p),
                  {"top_rate": 0.1, "activation_bar_ratio": 0.8})


def test_quantile_value_is_kthvalue_with_python_round():
    v = np.arange(10.0)[::-1]
    assert cr.quantile_value(v, 0.95, "r") == kth(v, 0.95) == 9.0  # rank round(9.5) = 10 (to even)
    assert cr.quantile_value(v, 0.85, "r") == 7.0  # rank round(8.5) = 8, not 9 (half up)
    with pytest.raises(ValueError, match="ratio"):
        cr.quantile_value(v, 0.01, "r")


# --------------------------------------------------------------------------- planted structure


@pytest.mark.parametrize("name,settings", [("zscore", None), ("lape", None), ("lna", None),
                                           ("average_precision", {"n_top": 1})])
def test_every_criterion_finds_the_planted_neuron(name, settings):
    res = cr.select(name, planted(), settings)
    assert res.mask[2, 1, 7], f"{name} missed the planted neuron"
    assert not res.mask[[0, 1, 3, 4, 5], 1, 7].any(), f"{name} gave it to another language"
    expected_total = {"lape": 1, "average_precision": 6}.get(name)  # 1 neuron kept; 1 per language
    if expected_total is not None:
        assert res.mask.sum() == expected_total


def test_bottom_n_takes_the_lowest_ap():
    res = cr.select("average_precision", planted(), {"n_top": 0, "n_bottom": 2})
    ap = res.score
    for l in range(ap.shape[0]):
        chosen = np.flatnonzero(res.mask[l].ravel())
        assert len(chosen) == 2 and ap[l].ravel()[chosen].max() <= np.sort(ap[l].ravel())[1]


# --------------------------------------------------------------------------- registry, settings, overlaps


def test_registry_and_settings():
    assert cr.CRITERIA.names() == ["average_precision", "lape", "lna", "zscore"]
    with pytest.raises(ConfigError, match="Did you mean 'lape'"):
        cr.select("lapee", planted())
    with pytest.raises(ConfigError, match="top_rat"):
        cr.CRITERIA.get("lape").settings({"top_rat": 0.1})
    assert cr.CRITERIA.get("lna").settings({"lam": 0.1}) == cr.LnaSettings(lam=0.1)
    with pytest.raises(ValueError, match="tau=2.0 selects no neuron"):
        cr.select("zscore", planted(K=5))
    with pytest.raises(ValueError, match="top_fraction"):
        cr.select("zscore", planted(), {"mode": "top_fraction"})


def test_overlaps_and_stability_match_sets():
    rng = np.random.default_rng(5)
    masks = {n: rng.random((3, 2, 6)) < 0.4 for n in ("a", "b", "c")}
    masks["c"][1] = False
    masks["b"][1] = False
    out = cr.overlaps(masks)

    def sets(m, keep):
        return {idx for idx in zip(*np.nonzero(m)) if keep(idx)}

    def jac(x, y):
        return len(x & y) / len(x | y) if x | y else math.nan

    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            mx, my = masks[x], masks[y]
            assert out["overall"][i, j] == pytest.approx(jac(sets(mx, bool), sets(my, bool)))
            for l in range(3):
                want = jac(sets(mx, lambda t: t[0] == l), sets(my, lambda t: t[0] == l))
                assert out["per_language"][i, j, l] == pytest.approx(want, nan_ok=True)
            for layer in range(2):
                want = jac(sets(mx, lambda t: t[1] == layer), sets(my, lambda t: t[1] == layer))
                assert out["per_layer"][i, j, layer] == pytest.approx(want, nan_ok=True)
    assert np.isnan(out["per_language"][1, 2, 1])  # both empty: undefined
    assert out["per_language_layer"].shape == (3, 3, 3, 2)
    steps = [masks["a"], masks["b"], masks["c"]]
    st = cr.stability(steps)
    assert st["overall"].tolist() == pytest.approx([out["overall"][0, 1], out["overall"][1, 2]])
    np.testing.assert_allclose(st["per_language"][1], out["per_language"][1, 2])


# --------------------------------------------------------------------------- the config (issue 12)

from lingua_ray.config import (CriterionName, RunConfig, bridge_threshold,  # noqa: E402
                               to_run_config, validate)
from lingua_ray.criteria_settings import CRITERION_STATISTICS  # noqa: E402


def test_default_config_runs_only_zscore_and_validates():
    cfg = validate(RunConfig())
    assert cfg.reduce.criteria == [CriterionName.zscore] and cfg.ablation.criteria == [CriterionName.zscore]
    assert cfg.reduce.lape == cr.LapeSettings() and cfg.reduce.lna == cr.LnaSettings()
    assert [c.value for c in CriterionName] == ["zscore", "lape", "average_precision", "lna"]
    assert set(CRITERION_STATISTICS) == set(cr.CRITERIA.names())
    for name, stats in CRITERION_STATISTICS.items():  # what validate() demands is what the criterion reads
        assert set(stats) == set(cr.CRITERIA.get(name).needs) - {"mean", "n_tokens"}  # mean: reduce.statistic


def test_criteria_config_from_the_command_line():
    from omegaconf import OmegaConf

    cfg = to_run_config(OmegaConf.from_dotlist(["reduce.criteria=[zscore,lape,lna]", "reduce.lape.top_rate=0.02",
                                                "capture.statistics=[mean,act_pos_frac]",
                                                "ablation.criteria=[lape]", "reduce.lna.lam=0.1"]))
    validate(cfg)
    assert cfg.reduce.criteria == [CriterionName.zscore, CriterionName.lape, CriterionName.lna]
    assert cfg.reduce.lape.top_rate == 0.02 and cfg.reduce.lna.lam == 0.1
    with pytest.raises(Exception, match="expected one of .zscore, lape, average_precision, lna"):
        to_run_config(OmegaConf.from_dotlist(["reduce.criteria=[lapee]"]))
    with pytest.raises(ConfigError, match=r"unknown config key 'reduce.lape.top_ratee'.*Did you mean reduce.lape.top_rate"):
        to_run_config(OmegaConf.from_dotlist(["reduce.lape.top_ratee=1"]))


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.reduce, "criteria", ["zscore", "lape"]),
     r"reduce.criteria includes lape, which reads the statistic act_pos_frac; add it: "
     r"capture.statistics=\[mean,act_pos_frac\]"),
    (lambda c: setattr(c.reduce, "criteria", ["lna"]), r"lna, which reads the statistic act_pos_frac"),
    (lambda c: setattr(c.reduce, "criteria", ["zscore", "lapee"]),
     r"reduce.criteria has unknown criterion 'lapee'; valid: zscore, lape, average_precision, lna"),
    (lambda c: setattr(c.reduce, "criteria", []), r"reduce.criteria is empty"),
    (lambda c: setattr(c.reduce, "criteria", ["zscore", "zscore"]), r"reduce.criteria has duplicates"),
    (lambda c: setattr(c.ablation, "criteria", ["average_precision"]),
     r"ablation.criteria includes average_precision, which reduce.criteria \['zscore'\] does not compute"),
    (lambda c: (setattr(c.reduce, "criteria", ["zscore", "average_precision"]),
                setattr(c.reduce.average_precision, "n_top", 0)), r"n_top=0 and n_bottom=0"),
    (lambda c: (setattr(c.capture, "statistics", ["mean", "act_pos_frac"]), setattr(c.reduce, "criteria", ["lape"]),
                setattr(c.ablation, "criteria", ["lape"]), setattr(c.reduce.lape, "filter_rate", 1.5)),
     r"reduce.lape.filter_rate=1.5 must be in \(0, 1\]"),
    (lambda c: setattr(c.reduce, "bridge_threshold", 9),
     r"reduce.bridge_threshold=9 can bridge no unit with reduce.knn_k=5 and 9 languages"),
    (lambda c: setattr(c.reduce, "knn_k", 0), r"reduce.knn_k=0 must be >= 1"),
])
def test_criteria_config_refused_before_compute(change, match):
    cfg = RunConfig()
    cfg.ablation.criteria = ["zscore"]
    change(cfg)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_bridge_threshold_default_fits_the_languages():
    cfg = RunConfig()
    assert bridge_threshold(cfg.reduce, 9) == 3 and bridge_threshold(cfg.reduce, 3) == 2
    cfg.corpus.languages = ["en", "fr", "id"]
    cfg.reduce.tau = 1.0
    validate(cfg)  # the default t = 3 would be an error with K = 3; None adapts
    cfg.reduce.alignment = False
    cfg.reduce.bridge_threshold = 7
    validate(cfg)  # not checked when alignment is off
