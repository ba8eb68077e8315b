"""results.py: schema validation with paths, JSON + CSV writing, atomic writes, loading."""

from __future__ import annotations

import copy
import csv
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_ray import results as R
from lingua_ray.results import ResultsError, load_results, validate_results, write_results
from lingua_ray.specificity import specificity_table
from results_fixtures import block_means, make_ablation_checkpoint, make_results, naive_block_means, naive_specificity


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kw", [{}, {"ablation": False}, {"n_checkpoints": 1}, {"steps": False},
                                {"K": 9, "S": 60, "L": 18, "n_checkpoints": 3}])
def test_fixture_is_valid(kw):
    validate_results(make_results(**kw))


def test_fixture_block_means_match_naive_loops():
    v = np.random.default_rng(3).normal(size=(3, 4, 7))
    for fast, slow in zip(block_means(v), naive_block_means(v)):
        np.testing.assert_allclose(fast, slow, atol=1e-12)


@pytest.mark.parametrize("ablation", [True, False])
def test_round_trip(tmp_path, ablation):
    d = make_results(ablation=ablation)
    path = write_results(d, tmp_path / "out")
    assert path == tmp_path / "out" / "results.json"
    assert load_results(path) == d
    assert load_results(tmp_path / "out") == d  # the folder works too
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_csv_row_counts_and_values(tmp_path):
    d = make_results(K=3, S=5, L=4, n_checkpoints=2)
    write_results(d, tmp_path)
    C, K, L = 2, 3, 4
    overall = _read_csv(tmp_path / "scores_overall.csv")
    assert len(overall) == 4 * C
    row = next(r for r in overall if r["checkpoint"] == "step2000" and r["metric"] == "sads" and r["definition"] == "balanced")
    st_ = d["checkpoints"][1]["overall_balanced"]["sads"]
    assert float(row["value"]) == st_["value"] and row["step"] == "2000"
    assert row["ci_lo"] == row["ci_hi"] == ""  # the fixture has no CI here: null -> empty cell
    layers = _read_csv(tmp_path / "scores_per_layer.csv")
    assert len(layers) == L * C
    r = layers[L + 3]
    pl = d["checkpoints"][1]["per_layer"]
    assert (r["checkpoint"], int(r["layer"])) == ("step2000", 3)
    assert float(r["lrds_hi"]) == pl["lrds"][3]["ci"][1] and float(r["norm_share"]) == pl["norm_share"][3]
    counts = _read_csv(tmp_path / "key_neuron_counts.csv")
    assert len(counts) == K * L * C
    assert sum(int(r["count"]) for r in counts if r["checkpoint"] == "step1000" and r["language"] == "l1") == \
        d["checkpoints"][0]["key_neurons"]["total"]["l1"]
    ab = d["ablation"]["checkpoints"]
    ppl = _read_csv(tmp_path / "ablation_ppl.csv")
    assert len(ppl) == sum(len(cp["rows"]) * len(cp["eval_languages"]) for cp in ab)
    # first ablation checkpoint: 1 + K * (1 + R) rows x (K - 1) eval languages
    assert sum(r["checkpoint"] == "step1000" for r in ppl) == (1 + K * (1 + 3)) * (K - 1)
    rnd = next(r for r in ppl if r["checkpoint"] == "step2000" and r["mask"] == "random:l2" and r["repeat"] == "1" and r["eval_language"] == "l0")
    src = next(x for x in ab[1]["rows"] if x["mask"] == "random:l2" and x["repeat"] == 1)
    assert float(rnd["log_ppl_ratio"]) == src["log_ppl_ratio"]["l0"] and int(rnd["n_neurons"]) == src["n_neurons"]
    spec = _read_csv(tmp_path / "ablation_specificity.csv")
    assert len(spec) == sum(len(cp["specificity"]) for cp in ab) == (K - 1) + K


def test_without_ablation_removes_stale_ablation_csvs(tmp_path):
    write_results(make_results(), tmp_path)
    assert (tmp_path / "ablation_ppl.csv").exists()
    write_results(make_results(ablation=False), tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(R.CSV_FILES + (R.RESULTS_FILE,))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_results(make_results(), tmp_path)
    write_results(make_results(seed=1), tmp_path)  # overwrite in place
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".") or f.endswith(".tmp")]
    assert load_results(tmp_path) == make_results(seed=1)


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    old = make_results()
    write_results(old, tmp_path)
    before = (tmp_path / "results.json").read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_results(make_results(seed=5), tmp_path)
    assert (tmp_path / "results.json").read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_invalid_results_write_nothing(tmp_path):
    d = make_results()
    d["settings"]["key_mode"] = "magic"
    with pytest.raises(ResultsError):
        write_results(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


NAN = float("nan")
MUTATIONS = [
    # (mutation on d, the path the error must name, a fragment of the message)
    (lambda d: d["checkpoints"][1]["language_block_means"].append([0.5] * 3), "checkpoints[1].language_block_means", "K = 3"),
    (lambda d: d["checkpoints"][1]["language_block_means"][2].pop(), "checkpoints[1].language_block_means[2]", "K = 3"),
    (lambda d: d["checkpoints"][0]["meaning_block_means"].pop(), "checkpoints[0].meaning_block_means", "S = 5"),
    (lambda d: d["checkpoints"][0]["per_layer"].pop("norm_share"), "checkpoints[0].per_layer.norm_share", "missing"),
    (lambda d: d.pop("ablation"), "ablation", "missing"),
    (lambda d: d["checkpoints"][1]["per_layer"]["lrds"][3].update(value=NAN), "checkpoints[1].per_layer.lrds[3].value", "finite"),
    (lambda d: d["checkpoints"][1]["per_layer"]["lrds"][3].update(ci=[0.2, 0.1]), "checkpoints[1].per_layer.lrds[3].ci", "lo"),
    (lambda d: d["checkpoints"][1]["per_layer"]["lrds"][3].update(ci=[0.1]), "checkpoints[1].per_layer.lrds[3].ci", "length"),
    (lambda d: d["checkpoints"][1]["per_layer"]["lrds"][3].update(ci=[NAN, 0.1]), "checkpoints[1].per_layer.lrds[3].ci[0]", "finite"),
    (lambda d: d["checkpoints"][0]["overall"]["sads"].update(p_value=1.5), "checkpoints[0].overall.sads.p_value", "outside"),
    (lambda d: d["settings"].update(key_mode="topk"), "settings.key_mode", "topk"),
    (lambda d: d["settings"].update(tau=None), "settings.tau", "tau"),
    (lambda d: d["settings"].update(key_mode="top_fraction"), "settings.top_fraction", "top_fraction"),
    (lambda d: d["settings"].update(n_boot=True), "settings.n_boot", "integer"),
    (lambda d: d["settings"].update(ci_level=1.0), "settings.ci_level", "(0, 1)"),
    (lambda d: d["run"].update(nmae="x"), "run.nmae", "unknown key"),
    (lambda d: d["run"].update(created_utc="2025-01-02T03:04:05"), "run.created_utc", "UTC"),
    (lambda d: d["run"].update(created_utc="yesterday"), "run.created_utc", "ISO 8601"),
    (lambda d: d.update(schema_version=4), "schema_version", "versions 1, 2, 3"),
    (lambda d: d.update(schema_version=1), "evolution", "needs schema_version 2"),
    (lambda d: d.update(evolution=None), "evolution", "leave the key out"),
    (lambda d: d.update(identical_checkpoints=None), "identical_checkpoints", "leave the key out"),
    (lambda d: d["identical_checkpoints"].append(["step1000"]), "identical_checkpoints[0]", "at least 2"),
    (lambda d: d["identical_checkpoints"].append(["step1000", "nope"]), "identical_checkpoints[0]", "'nope'"),
    (lambda d: d["identical_checkpoints"].append(["step2000", "step1000"]), "identical_checkpoints[0]", "grid order"),
    (lambda d: d["identical_checkpoints"].extend([["step1000", "step2000"], ["step1000", "step2000"]]),
     "identical_checkpoints[1]", "repeats"),
    (lambda d: d["evolution"].update(checkpoints=["step1000"]), "evolution.checkpoints", "grid.checkpoints"),
    (lambda d: d["evolution"].update(k=2), "evolution.k", "k_requested = 3"),
    (lambda d: d["evolution"].update(interval="bootstrap"), "evolution.interval", "'wilson'"),
    (lambda d: d["evolution"]["per_layer_lrds"][2].__setitem__(1, 0.5), "evolution.per_layer_lrds[2][1]", "per_layer.lrds[2]"),
    (lambda d: d["evolution"]["per_layer_sads"].pop(), "evolution.per_layer_sads", "n_layers = 4"),
    (lambda d: d["evolution"]["per_layer_sads"][0].pop(), "evolution.per_layer_sads[0]", "one per checkpoint"),
    (lambda d: d["evolution"]["key_counts"]["l1"][3].__setitem__(0, 5), 'evolution.key_counts["l1"]', "column 0"),
    (lambda d: d["evolution"]["key_counts"].pop("l2"), 'evolution.key_counts["l2"]', "missing"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1].update(n_key=99), 'evolution.edge_share["l0"][1].n_key', "sum to"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["last"].update(count=99), 'evolution.edge_share["l0"][1].last.count', "layers [3]"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["ends"].update(uniform=0.25), 'evolution.edge_share["l0"][1].ends.uniform', "2/4"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["first"].update(share=0.99), 'evolution.edge_share["l0"][1].first.share', "count / n_key"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["first"].update(ci=[0.9, 0.95]), 'evolution.edge_share["l0"][1].first.ci', "does not contain"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["first"].update(ci=[0.9, 0.1]), 'evolution.edge_share["l0"][1].first.ci', "lo 0.9 > hi 0.1"),
    (lambda d: d["evolution"]["edge_share"]["l0"][1]["first"].update(p_value=None), 'evolution.edge_share["l0"][1].first.p_value', "is null"),
    (lambda d: d["evolution"]["edge_share_pooled"][0]["first"].update(count=0), "evolution.edge_share_pooled[0].first.count", "sum to"),
    (lambda d: d["evolution"]["edge_share_pooled"].pop(), "evolution.edge_share_pooled", "one per checkpoint"),
    (lambda d: d["evolution"]["jaccard"]["l1"].__setitem__(0, 1.0), 'evolution.jaccard["l1"][0]', "the most the key counts allow"),
    (lambda d: d["evolution"]["jaccard"]["l1"].__setitem__(0, None), 'evolution.jaccard["l1"][0]', "both key sets are empty"),
    (lambda d: d["evolution"]["jaccard"]["l1"].append(0.1), 'evolution.jaccard["l1"]', "consecutive pair"),
    (lambda d: d["evolution"]["jaccard_chance"]["l1"].__setitem__(0, 1.5), 'evolution.jaccard_chance["l1"][0]', "outside"),
    (lambda d: d["evolution"].update(jaccard=None), "evolution.jaccard_chance", "exactly when jaccard is null"),
    (lambda d: d["evolution"].update(extra=1), "evolution.extra", "unknown key"),
    (lambda d: d["grid"].update(languages=["l0", "l1", "l1"]), "grid.languages", "repeat"),
    (lambda d: d["grid"]["checkpoints"][0].update(step=-1), "grid.checkpoints[0].step", "outside"),
    (lambda d: d["checkpoints"][1].update(label="other"), "checkpoints[1].label", "grid.checkpoints"),
    (lambda d: d["checkpoints"].pop(), "checkpoints", "one per grid.checkpoints"),
    (lambda d: d["checkpoints"][0]["per_layer"]["norm_share"].__setitem__(0, 0.9), "checkpoints[0].per_layer.norm_share", "sums"),
    (lambda d: d["checkpoints"][0]["overall"]["lrds"].update(value=0.9), "checkpoints[0].overall.lrds.value", "contrast"),
    (lambda d: d["checkpoints"][0]["language_block_means"][0].__setitem__(0, 1.5), "checkpoints[0].language_block_means[0][0]", "outside"),
    (lambda d: d["checkpoints"][0]["key_neurons"]["total"].update(l1=999), 'checkpoints[0].key_neurons.total["l1"]', "sum"),
    (lambda d: d["checkpoints"][0]["key_neurons"]["counts"].pop("l2"), 'checkpoints[0].key_neurons.counts["l2"]', "missing"),
    (lambda d: d["checkpoints"][0]["key_neurons"]["counts"]["l0"].__setitem__(1, 7), 'checkpoints[0].key_neurons.counts["l0"][1]', "outside"),
    (lambda d: d["checkpoints"][0]["key_neurons"]["overlap"][0].__setitem__(1, 10 ** 6), "checkpoints[0].key_neurons.overlap[0][1]", "overlap[1][0]"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][2]["log_ppl_ratio"].update(l0=9.0), 'ablation.checkpoints[1].rows[2].log_ppl_ratio["l0"]', "log(ppl"),
    (lambda d: d["ablation"]["checkpoints"][0]["specificity"]["l0"].update(specificity=3.0), 'ablation.checkpoints[0].specificity["l0"].specificity', "rows give"),
    (lambda d: d["ablation"]["checkpoints"][0]["specificity"].pop("l1"), 'ablation.checkpoints[0].specificity["l1"]', "missing"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][2].update(n_neurons=10 ** 4), "ablation.checkpoints[1].rows[2].n_neurons", "matches the count"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][1].update(mask="drop:l0"), "ablation.checkpoints[1].rows[1].mask", "drop:l0"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][1].update(mask="key:xx", language="xx"), "ablation.checkpoints[1].rows[1].mask", "grid.languages"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][2].update(repeat=3), "ablation.checkpoints[1].rows[2].repeat", "outside"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"].pop(0), "ablation.checkpoints[1].rows", "intact"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"].pop(3), "ablation.checkpoints[1].rows", "expected 0..2"),
    (lambda d: d["ablation"].update(n_random=4), "ablation.checkpoints[0].rows", "expected 0..3"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"].pop(1), "ablation.checkpoints[1].rows[1].mask", "without a key"),
    (lambda d: d["ablation"]["checkpoints"][1]["rows"][0]["ppl"].update(l0=0.5), 'ablation.checkpoints[1].rows[0].ppl["l0"]', "outside"),
    (lambda d: d["ablation"]["checkpoints"][1].update(label="nope"), "ablation.checkpoints[1].label", "grid checkpoint"),
]


@pytest.mark.parametrize("mutate,path,fragment", MUTATIONS, ids=[m[1] + ":" + m[2] for m in MUTATIONS])
def test_validation_names_the_bad_path(mutate, path, fragment):
    d = make_results()
    mutate(d)
    with pytest.raises(ResultsError) as e:
        validate_results(d)
    assert e.value.path == path, str(e.value)
    assert fragment in e.value.message, str(e.value)
    assert str(e.value).startswith(path + ": ")


def test_each_mutation_target_is_valid_before_mutating():
    # guards the table above: a mutation that errors for another reason would pass for the wrong reason
    validate_results(make_results())


def test_language_codes_with_dots_are_quoted_in_paths():
    d = make_results(languages=["en", "zh.Hans", "x y"])
    d["checkpoints"][0]["key_neurons"]["total"]["zh.Hans"] += 1
    with pytest.raises(ResultsError, match=r'key_neurons\.total\["zh\.Hans"\]'):
        validate_results(d)


def test_nan_in_nullable_field_is_written_as_null(tmp_path):
    d = make_results()
    d["checkpoints"][0]["overall"]["lrds"]["p_value"] = NAN
    validate_results(d)
    path = write_results(d, tmp_path)
    assert '"p_value": null' in path.read_text()
    loaded = load_results(path)
    assert loaded["checkpoints"][0]["overall"]["lrds"]["p_value"] is None
    expected = copy.deepcopy(d)
    expected["checkpoints"][0]["overall"]["lrds"]["p_value"] = None
    assert loaded == expected


def test_numpy_values_are_accepted_and_written_as_plain_json(tmp_path):
    d = make_results()
    cp = d["checkpoints"][1]
    cp["language_block_means"] = np.array(cp["language_block_means"])
    cp["per_layer"]["lrds"][0]["value"] = np.float32(cp["per_layer"]["lrds"][0]["value"])
    cp["key_neurons"]["total"]["l0"] = np.int64(cp["key_neurons"]["total"]["l0"])
    cp["overall"]["lrds"]["ci"] = tuple(cp["overall"]["lrds"]["ci"])
    loaded = load_results(write_results(d, tmp_path))
    assert loaded == R.normalize_results(d)
    assert loaded["checkpoints"][1]["language_block_means"] == cp["language_block_means"].tolist()
    assert isinstance(loaded["checkpoints"][1]["key_neurons"]["total"]["l0"], int)


def test_non_json_values_are_named():
    d = make_results()
    d["run"]["config"]["bad"] = {1, 2}
    with pytest.raises(ResultsError, match=r"run\.config\.bad: value of type set"):
        validate_results(d)


def test_load_rejects_nan_literal_and_names_the_file(tmp_path):
    path = write_results(make_results(), tmp_path)
    text = path.read_text()
    path.write_text(text.replace('"seed": 0', '"seed": NaN', 1))
    with pytest.raises(ResultsError, match="NaN is not valid JSON"):
        load_results(path)
    d = make_results()
    d["settings"]["seed"] = "zero"
    path.write_text(json.dumps(d))
    with pytest.raises(ResultsError, match=r"settings\.seed: .*\(in .*results\.json\)"):
        load_results(tmp_path)


def test_specificity_with_single_eval_language_and_no_random_rows():
    rng = np.random.default_rng(0)
    cp = make_ablation_checkpoint("c", ["a", "b", "c"], ["a"], 0, rng, 100)
    spec = specificity_table(cp["rows"], cp["eval_languages"])
    assert list(spec) == ["a"]  # b and c have key masks but no PPL in their own language
    assert math.isnan(spec["a"]["other_mean_log_ratio"]) and math.isnan(spec["a"]["specificity"])
    assert math.isnan(spec["a"]["random_own_log_ratio_mean"]) and math.isnan(spec["a"]["random_specificity_sd"])
    d = make_results(languages=["a", "b", "c"], R=0)
    d["ablation"]["checkpoints"][0] = {**cp, "label": d["grid"]["checkpoints"][0]["label"]}
    validate_results(d)


@settings(max_examples=40, deadline=None)
@given(n_lang=st.integers(2, 4), n_eval=st.integers(1, 4), R_=st.integers(0, 3), seed=st.integers(0, 10 ** 6))
def test_specificity_table_matches_naive_loops(n_lang, n_eval, R_, seed):
    rng = np.random.default_rng(seed)
    langs = [f"x{i}" for i in range(n_lang)]
    ev = [langs[i] for i in sorted(rng.choice(n_lang, size=min(n_eval, n_lang), replace=False))]
    cp = make_ablation_checkpoint("c", langs, ev, R_, rng, 200)
    fast, slow = specificity_table(cp["rows"], ev), naive_specificity(cp["rows"], ev)
    assert list(fast) == list(slow)
    for lang in fast:
        for k, v in slow[lang].items():
            if v is None:
                assert math.isnan(fast[lang][k]), (lang, k)
            else:
                assert math.isclose(fast[lang][k], v, rel_tol=1e-12, abs_tol=1e-12), (lang, k)


def test_validate_returns_the_typed_model():
    d = make_results()
    m = validate_results(d)
    assert isinstance(m, R.Results) and isinstance(m.checkpoints[0].overall.lrds, R.Stat)
    assert m.checkpoints[1].per_layer.lrds[3].value == d["checkpoints"][1]["per_layer"]["lrds"][3]["value"]
    assert m.ablation.checkpoints[0].specificity["l0"].specificity == d["ablation"]["checkpoints"][0]["specificity"]["l0"]["specificity"]
    assert validate_results(m) == m  # a model is accepted, and checked again


@pytest.mark.parametrize("ablation", [True, False])
def test_a_model_writes_the_same_bytes_as_its_dict(tmp_path, ablation):
    d = make_results(ablation=ablation)
    d["checkpoints"][0]["overall"]["lrds"]["p_value"] = NAN  # nullable: stored as None in the model, null in both
    write_results(d, tmp_path / "dict")
    write_results(validate_results(d), tmp_path / "model")
    names = sorted(os.listdir(tmp_path / "dict"))
    assert names == sorted(os.listdir(tmp_path / "model"))
    for name in names:
        assert (tmp_path / "dict" / name).read_bytes() == (tmp_path / "model" / name).read_bytes(), name


def test_a_mutated_model_is_checked_again_on_write(tmp_path):
    m = validate_results(make_results(ablation=False))
    m.checkpoints[0].per_layer.norm_share[0] = 0.9  # models are not frozen; write_results re-validates
    with pytest.raises(ResultsError, match=r"checkpoints\[0\]\.per_layer\.norm_share: sums"):
        write_results(m, tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_stages_can_build_models_from_numpy_and_config_enums():
    from pydantic import ValidationError

    from lingua_ray.config import KeyMode

    st_ = R.Stat(value=np.float32(0.5), ci=(0.25, np.float64(0.75)), p_value=np.nan)
    assert st_.model_dump() == {"value": 0.5, "ci": [0.25, 0.75], "p_value": None}
    s = R.Settings(tau=2.0, key_mode=KeyMode.zscore, top_fraction=None, n_boot=np.int64(10), n_perm=0, seed=0,
                   ci_level=0.95)
    assert s.key_mode == "zscore" and type(s.key_mode) is str and s.n_boot == 10
    with pytest.raises(ValidationError, match=r"ci: lo 0.75 > hi 0.25"):
        R.Stat(value=0.5, ci=[0.75, 0.25], p_value=None)
    with pytest.raises(ValidationError):
        R.Stat(value=math.inf, ci=None, p_value=None)  # a required float must be finite


def test_enum_in_a_dict_is_written_as_its_value(tmp_path):
    from lingua_ray.config import KeyMode

    d = make_results(ablation=False)
    d["settings"]["key_mode"] = KeyMode.zscore
    text = write_results(d, tmp_path).read_text()
    assert '"key_mode": "zscore"' in text


# ---------------------------------------------------------------- versions and the evolution keys


def test_version_1_file_without_the_new_keys_still_loads(tmp_path):
    d = make_results(version=1)
    assert "evolution" not in d and "identical_checkpoints" not in d
    path = write_results(d, tmp_path)
    loaded = load_results(path)
    assert loaded == d and "evolution" not in loaded
    m = validate_results(loaded)
    assert m.evolution is None and m.identical_checkpoints is None
    assert "evolution" not in R.normalize_results(m)  # absent stays absent through the model


def test_version_2_keys_may_be_absent_and_round_trip(tmp_path):
    for d in (make_results(evolution=False), make_results(n_checkpoints=4, identical=[[1, 3]])):
        assert load_results(write_results(d, tmp_path)) == d
    d = make_results(n_checkpoints=4, identical=[[1, 3]])
    assert d["identical_checkpoints"] == [["step2000", "step4000"]]
    assert d["evolution"]["k"] == 1 and d["evolution"]["k_requested"] == 3  # L = 4 leaves one layer per end


def test_an_empty_identical_list_means_checked():
    d = make_results()
    assert d["identical_checkpoints"] == [] and validate_results(d).identical_checkpoints == []


def test_evolution_model_writes_the_same_bytes_as_its_dict(tmp_path):
    d = make_results(n_checkpoints=3, identical=[[0, 2]])
    write_results(d, tmp_path / "dict")
    write_results(validate_results(d), tmp_path / "model")
    for name in os.listdir(tmp_path / "dict"):
        assert (tmp_path / "dict" / name).read_bytes() == (tmp_path / "model" / name).read_bytes(), name


def test_version_1_with_evolution_names_the_key():
    d = make_results()
    d["schema_version"] = 1
    d.pop("evolution")
    with pytest.raises(ResultsError, match=r"^identical_checkpoints: needs schema_version 2 \(the file says 1\)"):
        validate_results(d)



# ---------------------------------------------------------------- version 3: criteria and alignment


def _v3(**kw):
    return make_results(K=3, S=5, L=4, n_checkpoints=2, version=3, criteria=True, **kw)


@pytest.mark.parametrize("ablation", [True, False])
def test_version_3_criteria_and_alignment_round_trip(tmp_path, ablation):
    d = _v3(ablation=ablation)
    assert R.SCHEMA_VERSION == 3 and ("ablation" in d["criteria"]) == ablation
    path = write_results(d, tmp_path / "out")
    assert load_results(path) == json.loads(path.read_text())
    m = validate_results(load_results(path))
    assert m.criteria.names == ["zscore", "lape", "average_precision"]
    assert len(m.alignment.checkpoints[0].per_layer) == 4


V3_MUTATIONS = [
    (lambda d: d.update(schema_version=2), "criteria", "needs schema_version 3"),
    (lambda d: d.update(criteria=None), "criteria", "leave the key out"),
    (lambda d: d["criteria"]["checkpoints"][0]["criteria"]["lape"]["total"].update(l0=10 ** 6),
     'criteria.checkpoints[0].criteria["lape"].total["l0"]', "Σ counts"),
    (lambda d: d["criteria"]["checkpoints"][1]["criteria"]["zscore"]["counts"]["l1"].append(0),
     'criteria.checkpoints[1].criteria["zscore"].counts["l1"]', "length 5"),
    (lambda d: d["criteria"]["checkpoints"][0]["criteria"].pop("lape"), 'criteria.checkpoints[0].criteria["lape"]',
     "missing"),
    (lambda d: d["criteria"]["checkpoints"].reverse(), "criteria.checkpoints", "must be the grid's"),
    (lambda d: d["criteria"]["checkpoints"][0]["overlap"]["per_layer"].pop(), "criteria.checkpoints[0].overlap.per_layer",
     "length 3"),
    (lambda d: d["criteria"].update(stability=None), "criteria.stability", "exactly when the grid has one checkpoint"),
    (lambda d: d["criteria"]["ablation"]["lape"]["checkpoints"][0]["specificity"]["l0"].update(specificity=9.0),
     'criteria.ablation["lape"].checkpoints[0].specificity["l0"].specificity', "the rows give"),
    (lambda d: d["criteria"]["ablation"].update(lna=d["criteria"]["ablation"]["lape"]), 'criteria.ablation["lna"]',
     "not among criteria.names"),
    (lambda d: d["alignment"]["checkpoints"][0]["per_layer"].pop(), "alignment.checkpoints[0].per_layer", "length 3"),
    (lambda d: d["alignment"]["checkpoints"][1]["overall"]["mexa_pairs"].pop(),
     "alignment.checkpoints[1].overall.mexa_pairs", "length 2"),
    (lambda d: d["alignment"]["checkpoints"][0]["overall"]["retrieval"].update(ci=[0.9, 0.1]),
     "alignment.checkpoints[0].overall.retrieval.ci", "lo 0.9 > hi 0.1"),
]


@pytest.mark.parametrize("mutate,path,fragment", V3_MUTATIONS, ids=[m[1] + ":" + m[2] for m in V3_MUTATIONS])
def test_version_3_validation_names_the_bad_path(mutate, path, fragment):
    d = _v3()
    validate_results(d)
    mutate(d)
    with pytest.raises(ResultsError) as e:
        validate_results(d)
    assert e.value.path == path and fragment in e.value.message, str(e.value)
