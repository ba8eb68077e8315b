"""Multirun members never collide (lingua_ray/sweeps.py, conf/config.yaml's run naming).

The end-to-end test runs the documented multirun command: two members that differ only in
their language lists, each a revision sweep of a tiny LLaMA through the hub code path from a
local HF cache (HF_HUB_OFFLINE=1), and checks both result sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hub_cache import add_revision
from tiny_run import save_tiny, write_corpus
from lingua_ray.config import register_configs, to_run_config
from lingua_ray.sweeps import MEMBER_ENV, SweepError, member_suffix, swept_keys

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "fr", "id", "de"]


def _compose(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return to_run_config(compose("config", overrides=list(overrides)))


def test_single_run_names_are_unchanged(monkeypatch):
    monkeypatch.delenv(MEMBER_ENV, raising=False)
    monkeypatch.delenv("LINGUA_RAY_STORAGE_ROOT", raising=False)
    cfg = _compose(["model=bloom-560m", "corpus.languages=[en,fr,de]"])
    assert (cfg.run.name, cfg.run.out_dir) == ("bloom-560m-udhr", "runs/bloom-560m-udhr")
    monkeypatch.setenv("LINGUA_RAY_STORAGE_ROOT", "/mnt/lr")
    assert _compose([]).run.out_dir == "/mnt/lr/gemma3-270m-udhr"


def test_member_names_come_from_the_swept_overrides_only():
    sweep = ["corpus.languages=[en,fr,de],[en,fr,es]", "corpus=jsonl", "corpus.path=/data/c.jsonl",
             "model=a,b"]
    swept = swept_keys(sweep)
    assert swept == ["corpus.languages", "model"]
    a = member_suffix(["corpus.languages=[en,fr,de]", "corpus=jsonl", "corpus.path=/data/c.jsonl", "model=a"], swept)
    b = member_suffix(["corpus.languages=[en, fr, es]", "corpus=jsonl", "corpus.path=/data/c.jsonl", "model=a"], swept)
    assert a == "__corpus.languages-en+fr+de__model-a" and b == "__corpus.languages-en+fr+es__model-a"
    assert member_suffix(["x=1"], []) == ""
    # The name is a valid unquoted Hydra value and one path segment.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(f"run.name=t{a}").value() == f"t{a}"
    assert "/" not in member_suffix(["corpus.path=/a/b.jsonl"], ["corpus.path"])


def test_fixed_names_and_folders_are_refused_a_fixed_store_is_allowed(caplog):
    with pytest.raises(SweepError, match="run.name=x is fixed"):
        swept_keys(["model=a,b", "run.name=x"])
    with pytest.raises(SweepError, match="run.out_dir=/mnt/out is fixed"):
        swept_keys(["model=a,b", "run.out_dir=/mnt/out"])
    assert swept_keys(["model=a,b", "run.out_dir=/mnt/${run.name}"]) == ["model"]
    with caplog.at_level("WARNING", logger="lingua_ray"):
        assert swept_keys(["model=a,b", "store.path=/mnt/shared.zarr"]) == ["model"]
    assert "records into that one store" in caplog.text
    assert swept_keys(["run.name=x"]) == []  # not a sweep: a single member may be named


def test_a_fixed_run_name_stops_the_multirun_before_any_member(tmp_path):
    env = {**os.environ, "LINGUA_RAY_STORAGE_ROOT": str(tmp_path / "runs")}
    r = subprocess.run([sys.executable, "workflows/pipeline.py", "-m", "model=bloom-560m,bloom-1b1", "run.name=x"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "multirun refused: run.name=x is fixed" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "runs" / "x").exists()


@pytest.fixture(scope="module")
def hub_and_corpus(tmp_path_factory):
    """A local HF cache with two revisions of a tiny LLaMA, and a 4-language jsonl corpus."""
    root = tmp_path_factory.mktemp("sweep")
    for seed, refs in ((1, ["step100"]), (2, ["step200", "main"])):
        src = root / "src" / refs[0]
        save_tiny(src, seed)
        add_revision(root / "hub", "lr-test/tiny-llama", refs, src)
    write_corpus(root / "corpus.jsonl", 12, LANGS)
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_member_multirun_of_a_hub_revision_sweep(hub_and_corpus, tmp_path):
    root = hub_and_corpus
    store_root = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1",
           "LINGUA_RAY_STORAGE_ROOT": str(store_root), "TOKENIZERS_PARALLELISM": "false",
           "RAY_USAGE_STATS_ENABLED": "0", "LINGUA_RAY_HASH_CACHE": "off"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "workflows/pipeline.py", "-m", "corpus.languages=[en,fr,id],[en,fr,de]",
           "model=tiny-trajectory", "model.name=tiny-hub", "model.source=hub", "model.hf_id=lr-test/tiny-llama",
           "model.checkpoints=[{label:step100,revision:step100,step:100},{label:step200,revision:step200,step:200}]",
           "corpus=jsonl", f"corpus.path={root / 'corpus.jsonl'}", "split.heldout_units=4", "capture.max_tokens=64",
           "capture.token_budget=256", "reduce.tau=1.0", "reduce.n_boot=20", "reduce.n_perm=20",
           "stages=[record,reduce]", "cluster.num_cpus=2"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    members = {"en+fr+id": ["en", "fr", "id"], "en+fr+de": ["en", "fr", "de"]}
    hashes = set()
    for tag, langs in members.items():
        out = store_root / f"tiny-hub-jsonl__corpus.languages-{tag}"
        res = json.loads((out / "results.json").read_text())
        assert res["run"]["name"] == out.name
        assert res["grid"]["languages"] == langs == res["run"]["config"]["corpus"]["languages"]
        assert res["run"]["store"] == str(out / "activations.zarr")
        assert [c["label"] for c in res["grid"]["checkpoints"]] == ["step100", "step200"]
        assert [c["revision"] for c in res["grid"]["checkpoints"]] == ["step100", "step200"]
        stats = json.loads((out / "record_stats.json").read_text())
        assert [s["units_recorded"] for s in stats] == [2 * 3 * 8]  # each member recorded its own store once
        from lingua_ray.store import ActivationStore

        store = ActivationStore(str(out / "activations.zarr"))
        assert store.languages == langs
        fps = store.checkpoint_fingerprints()
        hashes.add(tuple(fps[c]["weights_sha256"] for c in ("step100", "step200")))
    assert not (store_root / "tiny-hub-jsonl").exists(), "a member used the unsuffixed name"
    # Both members read the same two revisions, and the revisions differ (hashes from blob names).
    (pair,) = hashes
    assert pair[0] != pair[1]
    assert list((store_root / "multirun").iterdir()), "Hydra's sweep folder is not under the storage root"
