"""End to end on a local Ray: a tiny LLaMA saved to disk, a jsonl corpus, every stage, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lingua_ray.config import AblationConfig, ReduceConfig, RunConfig
from lingua_ray import pipeline
from lingua_ray.stages import record, reduce
from lingua_ray.stages.inputs import corpora, store_path
from lingua_ray.store import ActivationStore, StoreError
from lingua_ray.worker import ModelWorker
from tiny_run import save_tiny, tiny_config, write_corpus

LANGS = ["en", "fr", "id"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    for seed in (0, 1):
        save_tiny(root / f"m{seed}", seed)
    write_corpus(root / "corpus.jsonl", 14, LANGS)
    return root


pytestmark = pytest.mark.usefixtures("ray_local")


def make_cfg(root, out, checkpoints=("m0",), unit_block=4, stats=("mean", "pos_frac")) -> RunConfig:
    return tiny_config(root, out, checkpoints, stats, unit_block, reduce=ReduceConfig(tau=1.0, n_boot=50, n_perm=50),
                       ablation=AblationConfig(n_random=2))


def test_record_resume_equals_uninterrupted(tiny_dirs, tmp_path):
    full = make_cfg(tiny_dirs, tmp_path / "full")
    stats = record.run(full)
    assert stats.units_recorded == 3 * 10 and stats.tokens > 0

    part = make_cfg(tiny_dirs, tmp_path / "part")
    path = store_path(part)
    store = ActivationStore.create_or_extend(path, record.grid_spec(part), part.store.unit_block)
    missing = list(store.missing_blocks())
    # "Interrupted": only some blocks ran; one more block got its data but died before its markers.
    worker = ModelWorker(part.model, part.model.checkpoints, 0)
    for ck, lang, s0, s1 in missing[:4]:
        worker.record(path, part.capture, ck, lang, s0, s1)
    ck, lang, s0, s1 = missing[4]
    store.group["activations"][0, store.languages.index(lang), s0:s1] = 7.0
    again = record.run(part)
    assert again.units_recorded == 30 - sum(b[3] - b[2] for b in missing[:4])
    a, b = ActivationStore(store_path(full)), ActivationStore(path)
    for name in ("activations", "activations_pos_frac", "n_tokens", "cell_crc32"):
        np.testing.assert_allclose(a.group[name][:], b.group[name][:], rtol=0, atol=1e-6)
    assert record.run(part).units_recorded == 0  # a third run has nothing to do
    history = json.loads((tmp_path / "part" / "record_stats.json").read_text())
    assert [h["units_recorded"] for h in history] == [again.units_recorded, 0]  # resumes keep history


def test_other_model_refused_nothing_overwritten(tiny_dirs, tmp_path):
    cfg = make_cfg(tiny_dirs, tmp_path / "r")
    record.run(cfg)
    before = ActivationStore(store_path(cfg)).group["activations"][:]
    other = make_cfg(tiny_dirs, tmp_path / "r")
    other.model.checkpoints[0].path = str(tiny_dirs / "m1")  # same label, other weights
    with pytest.raises(StoreError, match="checkpoint 'm0' was recorded from a different model"):
        record.run(other)
    cap = make_cfg(tiny_dirs, tmp_path / "r")
    cap.capture.max_tokens = 32
    with pytest.raises(StoreError, match="identity"):
        record.run(cap)
    np.testing.assert_array_equal(ActivationStore(store_path(cfg)).group["activations"][:], before)


def test_all_stages_and_growth(tiny_dirs, tmp_path):
    cfg = make_cfg(tiny_dirs, tmp_path / "run")
    out = pipeline.run(cfg)
    res = out["ablate"]
    assert [c["label"] for c in res["checkpoints"]] == ["m0"]
    ab = res["ablation"]["checkpoints"][0]
    assert ab["rows"][0]["mask"] == "none" and len(ab["rows"]) == 1 + 3 * (1 + 2)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "data:image/png;base64" in html
    store = ActivationStore(store_path(cfg))
    mask = store.read_key_mask("m0")
    counts = res["checkpoints"][0]["key_neurons"]["counts"]
    assert [sum(counts[l]) for l in LANGS] == mask.sum(axis=(1, 2)).tolist()
    # Held-out units never picked neurons.
    sel, held = corpora(cfg)
    assert not set(held.unit_ids) & set(store.unit_ids.tolist())
    # Growth: a second checkpoint is appended; the first one's data is untouched.
    before = store.group["activations"][:]
    grown = make_cfg(tiny_dirs, tmp_path / "run", checkpoints=("m0", "m1"))
    st = record.run(grown)
    assert st.units_recorded == 30
    after = ActivationStore(store_path(cfg)).group["activations"][:]
    np.testing.assert_array_equal(after[:1], before)
    res2 = reduce.run(grown)
    assert [c["label"] for c in res2["checkpoints"]] == ["m0", "m1"]
    assert res2["checkpoints"][0]["overall"] == res["checkpoints"][0]["overall"]


@pytest.mark.slow
def test_changed_settings_recompute_ablation_equal_to_fresh(tiny_dirs, tmp_path):
    """A re-run with a new tau or ablation seed never reuses perplexities of another mask: it
    equals a fresh run with the new settings; an unchanged re-run evaluates nothing."""
    cfg = make_cfg(tiny_dirs, tmp_path / "a")
    pipeline.run(cfg, ["record", "reduce", "ablate"])
    changed = make_cfg(tiny_dirs, tmp_path / "a")
    changed.reduce.tau, changed.ablation.seed = 0.8, 5
    again = pipeline.run(changed, ["reduce", "ablate"]).ablate
    fresh_cfg = make_cfg(tiny_dirs, tmp_path / "b")
    fresh_cfg.reduce.tau, fresh_cfg.ablation.seed = 0.8, 5
    fresh = pipeline.run(fresh_cfg, ["record", "reduce", "ablate"]).ablate
    assert again["checkpoints"] == fresh["checkpoints"]
    for a, b in zip(again["ablation"]["checkpoints"], fresh["ablation"]["checkpoints"]):
        assert a["rows"] == b["rows"] and a["specificity"] == b["specificity"]
    # The masks really changed (else this test would prove nothing).
    old = json.loads((tmp_path / "b" / "results.json").read_text())
    assert old["checkpoints"][0]["key_neurons"]["total"] != pipeline.run(cfg, ["reduce"]).reduce[
        "checkpoints"][0]["key_neurons"]["total"]


def test_unchanged_rerun_evaluates_nothing(tiny_dirs, tmp_path, capsys):
    cfg = make_cfg(tiny_dirs, tmp_path / "a")
    cfg.ablation.n_random = 1
    pipeline.run(cfg, ["record", "reduce", "ablate"])
    capsys.readouterr()
    pipeline.run(cfg, ["record", "reduce", "ablate"])
    out = capsys.readouterr().out
    assert "nothing to do" in out and "[ablate] 0 of" in out


def test_store_with_a_language_the_config_does_not_name_is_refused_before_work(tiny_dirs, tmp_path):
    """Two configs sharing one store: the one naming fewer languages would report the other's too."""
    out = tmp_path / "run"
    rows = [json.loads(x) for x in (tiny_dirs / "corpus.jsonl").read_text().splitlines()]
    (tmp_path / "c4.jsonl").write_text("".join(json.dumps({**r, "de": r["fr"].replace("fr", "de")}) + "\n"
                                               for r in rows))
    cfg = make_cfg(tiny_dirs, out)
    cfg.corpus.path = str(tmp_path / "c4.jsonl")
    cfg.corpus.languages = ["en", "fr", "id", "de"]
    record.run(cfg)  # the store holds en, fr, id, de
    store = ActivationStore(store_path(cfg))
    before = (sorted(store.languages), store.done().copy())
    narrower = make_cfg(tiny_dirs, out)
    narrower.corpus.path = cfg.corpus.path
    with pytest.raises(pipeline.ConfigError, match=r"holds languages \['de'\].*corpus.languages"):
        pipeline.run(narrower)
    assert not (out / "results.json").exists() and not (out / "config.resolved.json").exists()
    store = ActivationStore(store_path(cfg))
    assert (sorted(store.languages), store.done().tolist()) == (before[0], before[1].tolist())  # nothing changed
    pipeline.preflight(cfg, {pipeline.Stage.reduce})  # the config naming all of them is fine


def test_float16_store_records_and_reduces_close_to_float32(tiny_dirs, tmp_path):
    """store.dtype=float16 end to end: the store holds float16, reduce reads float32, the scores
    move by float16 rounding only, and the store refuses a float32 run afterwards."""
    res = {}
    for dtype in ("float32", "float16"):
        cfg = make_cfg(tiny_dirs, tmp_path / dtype)
        cfg.store.dtype = dtype
        record.run(cfg)
        res[dtype] = reduce.run(cfg)
        assert ActivationStore(store_path(cfg)).group["activations"].dtype == np.dtype(dtype)
    for m in ("lrds", "sads"):
        a, b = (res[d]["checkpoints"][0]["overall"][m]["value"] for d in ("float32", "float16"))
        assert a != b and abs(a - b) < 1e-3 * max(abs(a), 1e-3), (m, a, b)
    refused = make_cfg(tiny_dirs, tmp_path / "float16")  # default float32 on the float16 store
    with pytest.raises(StoreError, match="stores its statistics as float16"):
        record.run(refused)
