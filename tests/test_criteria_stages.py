"""Issue 12 end to end on a local Ray: every criterion's masks in the store and results.json, computed by
the reduce stage's per-layer tasks and equal to the pure in-memory path; alignment per layer and overall;
planted-structure recovery through the stage; ablation per criterion with its matched controls and resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lingua_ray import criteria as cr
from lingua_ray import pipeline
from lingua_ray.ablation import plan_masks, summarise_ablation
from lingua_ray.alignment import AlignmentSettings, alignment_from_vectors
from lingua_ray.config import AblationConfig, ReduceConfig, RunConfig, validate
from lingua_ray.criteria_settings import AveragePrecisionSettings, LapeSettings, LnaSettings
from lingua_ray.reduce_criteria import _width, criterion_settings, layer_criteria, overall_alignment
from lingua_ray.results import load_results
from lingua_ray.results_csv import ALIGNMENT_METRICS
from lingua_ray.stages import reduce
from lingua_ray.stages.inputs import store_path
from lingua_ray.store import ActivationStore
from tiny_run import save_tiny, tiny_config, write_corpus

LANGS = ["en", "fr", "id"]
ALL = ["zscore", "lape", "average_precision", "lna"]
pytestmark = pytest.mark.usefixtures("ray_local")


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_criteria")
    for seed in (0, 1):
        save_tiny(root / f"m{seed}", seed)
    write_corpus(root / "corpus.jsonl", 14, LANGS)
    return root


def make_cfg(root, out, checkpoints=("m0", "m1"), ablate=("zscore",), max_task_bytes=1 << 30) -> RunConfig:
    cfg = tiny_config(
        root, out, checkpoints, ["mean", "act_pos_frac"], num_actors=1,
        # L·F = 2·24 = 48 neurons: rates that keep a few of them
        reduce=ReduceConfig(tau=1.0, n_boot=30, n_perm=20, criteria=list(ALL), lape=LapeSettings(top_rate=0.1),
                            lna=LnaSettings(top_rate=0.1), average_precision=AveragePrecisionSettings(n_top=4),
                            max_task_bytes=max_task_bytes),
        ablation=AblationConfig(n_random=1, criteria=list(ablate)))
    return validate(cfg)


def in_memory_inputs(store: ActivationStore, ck: str) -> cr.CriterionInputs:
    c = store.checkpoints.index(ck)
    return cr.CriterionInputs.from_arrays(mean=store.group["activations"][c],
                                          act_pos_frac=store.group["activations_act_pos_frac"][c],
                                          n_tokens=store.n_tokens(ck))


@pytest.fixture(scope="module")
def reduced(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("criteria_run")
    cfg = make_cfg(tiny_dirs, out)
    pipeline.run(cfg, ["record", "reduce"])
    return cfg, out


def test_every_criterion_mask_is_in_the_store_and_equals_the_in_memory_path(reduced):
    cfg, out = reduced
    store = ActivationStore(store_path(cfg))
    res = load_results(out)
    crit = res["criteria"]
    assert crit["names"] == ALL and res["schema_version"] == 3
    for c, ck in enumerate(store.checkpoints):
        inputs = in_memory_inputs(store, ck)
        masks = {}
        for name in ALL:
            want = cr.select(name, inputs, criterion_settings(cfg, name))
            got = store.read_criterion_mask(ck, name)
            np.testing.assert_array_equal(got, want.mask, err_msg=f"{ck} {name}")
            assert store.criterion_settings(name) == criterion_settings(cfg, name) == crit["settings"][name]
            entry = crit["checkpoints"][c]["criteria"][name]
            assert [entry["counts"][lang] for lang in LANGS] == want.counts().tolist()
            assert entry["n_neurons"] == int(want.mask.any(0).sum())
            masks[name] = got
        assert sum(masks["lape"].sum(axis=(1, 2))) > 0 and masks["average_precision"].sum() == 3 * 4
        np.testing.assert_array_equal(masks["zscore"], store.read_key_mask(ck))  # one rule, one mask
        ov = cr.overlaps(masks)
        np.testing.assert_allclose(np.array(crit["checkpoints"][c]["overlap"]["overall"], dtype=float),
                                   ov["overall"], equal_nan=True)
        for k, lang in enumerate(LANGS):
            np.testing.assert_allclose(np.array(crit["checkpoints"][c]["overlap"]["per_language"][lang],
                                                dtype=float), ov["per_language"][:, :, k], equal_nan=True)
    for name in ALL:  # stability: the Jaccard of the two checkpoints' masks
        a, b = (store.read_criterion_mask(ck, name) for ck in store.checkpoints)
        got = crit["stability"][name]["overall"][0]
        want = cr.jaccard(a, b)
        assert (got is None and np.isnan(want)) or got == pytest.approx(float(want))


def test_alignment_per_layer_and_overall_equal_the_in_memory_path(reduced):
    cfg, out = reduced
    store = ActivationStore(store_path(cfg))
    al = load_results(out)["alignment"]
    assert al["knn_k"] == 5 and al["bridge_threshold"] == 2  # min(3, K − 1) with K = 3
    st = AlignmentSettings(5, 2)
    _, K, S, L, F = store.shape
    for c, ck in enumerate(store.checkpoints):
        a = store.group["activations"][c]  # (K, S, L, F)
        for layer in range(L):
            want = alignment_from_vectors(a[:, :, layer, :], K, S, st).summary()
            got = al["checkpoints"][c]["per_layer"][layer]
            for name, v in want.items():
                assert got[name]["value"] == pytest.approx(v, abs=1e-12), (ck, layer, name)
        want = alignment_from_vectors(a.reshape(K, S, L * F), K, S, st).summary()
        got = al["checkpoints"][c]["overall"]
        for name, v in want.items():
            assert got[name]["value"] == pytest.approx(v, abs=1e-9), (ck, name)
        assert got["retrieval"]["ci"][0] <= got["retrieval"]["value"] <= got["retrieval"]["ci"][1]
        assert got["cka"]["ci"] is None
    # alignment.csv: one row per checkpoint × scope (overall + L layers) × metric, the JSON's values
    rows = _read_csv(out / "alignment.csv")
    assert len(rows) == len(store.checkpoints) * (L + 1) * len(ALIGNMENT_METRICS)
    for r in rows:
        cp = next(x for x in al["checkpoints"] if x["label"] == r["checkpoint"])
        scope = cp["overall"] if r["scope"] == "overall" else cp["per_layer"][int(r["layer"])]
        want = scope[r["metric"]]["value"]
        assert (r["value"] == "" and want is None) or float(r["value"]) == want


def test_criteria_csv_tables_hold_the_json_counts_and_overlaps(reduced):
    _, out = reduced
    crit = load_results(out)["criteria"]
    names, L = crit["names"], len(crit["checkpoints"][0]["overlap"]["per_layer"])
    counts = _read_csv(out / "criteria_counts.csv")
    assert len(counts) == len(crit["checkpoints"]) * len(names) * len(LANGS) * L
    for r in counts:
        cp = next(x for x in crit["checkpoints"] if x["label"] == r["checkpoint"])
        assert int(r["count"]) == cp["criteria"][r["criterion"]]["counts"][r["language"]][int(r["layer"])]
    overlap = _read_csv(out / "criteria_overlap.csv")
    pairs = len(names) * (len(names) - 1) // 2
    assert len(overlap) == len(crit["checkpoints"]) * pairs * (1 + len(LANGS) + L)
    for r in overlap:
        cp = next(x for x in crit["checkpoints"] if x["label"] == r["checkpoint"])
        ov = cp["overlap"]
        M = {"overall": lambda: ov["overall"], "language": lambda: ov["per_language"][r["where"]],
             "layer": lambda: ov["per_layer"][int(r["where"])]}[r["scope"]]()
        want = M[names.index(r["criterion_a"])][names.index(r["criterion_b"])]
        assert (r["jaccard"] == "" and want is None) or float(r["jaccard"]) == want


def test_a_small_task_budget_reads_in_slices_and_gives_the_same_results(reduced):
    """The task bodies with a budget that forces unit blocks of 1 and neuron slices of width 1 give what
    one read of the whole layer gives (the stage's default budget)."""
    cfg, _ = reduced
    path = store_path(cfg)
    store = ActivationStore(path)
    _, K, S, L, F = store.shape
    small = 12 * 8 * K * S  # one neuron per slice, one unit per block of act_pos_frac
    assert _width(K, S, F, small) == 1 and _width(K, S, F, 1 << 30) == F
    st = AlignmentSettings(5, 2)
    needs = ("act_prob", "ap")
    for layer in range(L):
        a = layer_criteria(path, "m1", layer, needs, small, st)
        b = layer_criteria(path, "m1", layer, needs, 1 << 30, st)
        for name in needs:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-12)
        assert a["alignment"].summary() == pytest.approx(b["alignment"].summary(), abs=1e-12)
    assert overall_alignment(path, "m1", small, st).summary() == pytest.approx(
        overall_alignment(path, "m1", 1 << 30, st).summary(), abs=1e-12)


def test_planted_neuron_is_found_by_every_criterion_through_the_stage(reduced, tiny_dirs, tmp_path):
    """The store's statistics replaced by random ones with neuron (layer 1, k 7) planted for fr: the
    reduce stage's per-layer tasks select it for fr under every criterion."""
    cfg, _ = reduced
    run = make_cfg(tiny_dirs, tmp_path / "planted", checkpoints=("m0",))
    pipeline.run(run, ["record"])
    store = ActivationStore(store_path(run), mode="r+")
    _, K, S, L, F = store.shape
    rng = np.random.default_rng(3)
    mean = rng.normal(0.0, 1.0, (K, S, L, F)).astype(np.float32)
    frac = rng.uniform(0.2, 0.8, (K, S, L, F)).astype(np.float32)
    mean[:, :, 1, 7] = 0.05 * rng.normal(size=(K, S))
    mean[1, :, 1, 7] = 6.0 + 0.1 * rng.normal(size=S)  # fr units share a strong response
    frac[:, :, 1, 7] = 0.0
    frac[1, :, 1, 7] = 1.0  # active on every fr token, never elsewhere
    store.group["activations"][0] = mean
    store.group["activations_act_pos_frac"][0] = frac
    for k in range(K):  # the writer's size record, so the store still counts as complete
        for b in range(len(store.blocks())):
            store.group["shard_bytes"][0, k, b] = store._shard_bytes(0, k, b)
    res = reduce.run(run)
    for name in ALL:
        mask = store.read_criterion_mask("m0", name)
        assert mask[1, 1, 7], f"{name} missed the planted neuron"
        assert not mask[[0, 2], 1, 7].any(), f"{name} gave the planted neuron to another language"
    assert res["criteria"]["checkpoints"][0]["criteria"]["lape"]["counts"]["fr"][1] >= 1


def test_ablation_per_criterion_with_matched_controls_and_resume(reduced, tiny_dirs, tmp_path, capsys):
    cfg, out = reduced
    run = make_cfg(tiny_dirs, out, ablate=ALL)
    run.run.out_dir = str(out)
    res = pipeline.run(run, ["ablate"]).ablate
    store = ActivationStore(store_path(run))
    ab = res["criteria"]["ablation"]
    assert list(ab) == ALL and res["ablation"] == ab["zscore"]
    for name in ALL:
        for cp in ab[name]["checkpoints"]:
            mask = store.read_criterion_mask(cp["label"], name)
            plan = plan_masks(mask, LANGS, 1, run.ablation.seed)
            keys = {r["mask"]: r["n_neurons"] for r in cp["rows"] if r["repeat"] in (None, 0)}
            for spec in plan[1:]:  # the criterion's sets and controls of the same per-layer sizes
                assert keys[spec.name] == spec.n_neurons
                if spec.kind == "random":
                    k = LANGS.index(spec.language)
                    np.testing.assert_array_equal(spec.mask.sum(1), mask[k].sum(1))
            assert cp["specificity"] == summarise_ablation(cp["rows"], LANGS, LANGS)
    spec, saved = _read_csv(out / "criteria_specificity.csv"), load_results(out)["criteria"]["ablation"]
    assert len(spec) == sum(len(cp["specificity"]) for name in ALL for cp in ab[name]["checkpoints"])
    for r in spec:  # the saved JSON's values (NaN written as null: an empty cell)
        cp = next(x for x in saved[r["criterion"]]["checkpoints"] if x["label"] == r["checkpoint"])
        want = cp["specificity"][r["language"]]
        for k, v in want.items():
            assert (r[k] == "" and v is None) or float(r[k]) == pytest.approx(v), (r["criterion"], k)
    capsys.readouterr()
    pipeline.run(run, ["ablate"])
    assert "[ablate] 0 of" in capsys.readouterr().out  # resume: nothing re-evaluated

    # A changed criterion setting: ablating before reducing again is refused (stale mask) ...
    changed = make_cfg(tiny_dirs, out, ablate=ALL)
    changed.reduce.lape.top_rate = 0.2
    with pytest.raises(ValueError, match="mask_lape .* was selected with settings"):
        pipeline.run(changed, ["ablate"])
    # ... and after reducing, only the masks that changed are evaluated again.
    pipeline.run(changed, ["reduce"])
    capsys.readouterr()
    again = pipeline.run(changed, ["ablate"]).ablate
    line = next(x for x in capsys.readouterr().out.splitlines() if "evaluation units to run" in x)
    n_todo, n_all = int(line.split()[1]), int(line.split()[3])
    assert 0 < n_todo < n_all
    assert again["criteria"]["ablation"]["zscore"] == ab["zscore"]
    assert again["criteria"]["ablation"]["lape"] != ab["lape"]
