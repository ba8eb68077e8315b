"""Hub revision sweeps, offline: a local HF cache (tests/hub_cache.py) and HF_HUB_OFFLINE=1.

Checkpoints are hub revisions (``model.source=hub``, ``checkpoints[i].revision``), resolved
refs → snapshot → blobs exactly as for a downloaded repo: never the local-folder path. The full
pipeline over revisions runs in tests/test_sweeps.py (a two-member multirun); here: the checks,
fingerprints and loads of the hub path, ``follow.hub_refs`` discovery, and the BLOOM-style
revisions that ship only pickled ``.bin`` weights.
"""

from __future__ import annotations

import pytest
import torch

from hub_cache import add_revision
from lingua_ray.config import CheckpointConfig, ModelConfig
from lingua_ray.follow import hub_checkpoints
from lingua_ray.models import loading
from lingua_ray.models.loading import ModelLoadError, check_checkpoints, load_checkpoint, model_fingerprint
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer

REPO = "lr-test/tiny-llama"
BIN_REPO = "lr-test/tiny-bloom-intermediate"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Three revisions of a tiny LLaMA (global_step100 = main's weights under another commit is
    not needed: each revision has its own weights), and a BLOOM repo whose revision has only .bin."""
    root = tmp_path_factory.mktemp("hubcache")
    hub = root / "hub"
    for seed, refs in ((1, ["global_step100"]), (2, ["global_step200"]), (3, ["global_step300", "main"])):
        src = root / "src" / refs[0]
        tiny_model("llama", seed=seed).save_pretrained(src)
        tiny_tokenizer().save_pretrained(src)
        add_revision(hub, REPO, refs, src)
    src = root / "src" / "bloom-bin"
    bloom = tiny_model("bloom", seed=4)
    bloom.save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    (src / "model.safetensors").unlink()  # transformers only writes safetensors; the old repos ship pickles
    torch.save(bloom.state_dict(), src / "pytorch_model.bin")
    add_revision(hub, BIN_REPO, ["global_step1000"], src)
    return root


@pytest.fixture
def offline(cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _model(repo=REPO, revisions=("global_step100", "global_step200"), **kw) -> ModelConfig:
    return ModelConfig(name="tiny-hub", source="hub", hf_id=repo, gguf_package=None,
                       checkpoints=[CheckpointConfig(label=r.replace("global_", ""), revision=r,
                                                     step=int(r.rsplit("step", 1)[1])) for r in revisions], **kw)


def test_revisions_resolve_through_the_cache_and_differ(offline):
    cfg = _model()
    check_checkpoints(cfg)
    where = [loading.resolve_checkpoint(cfg, c) for c in cfg.checkpoints]
    assert where == [(REPO, "global_step100"), (REPO, "global_step200")]  # the hub path, not a folder
    fps = [model_fingerprint(cfg, c) for c in cfg.checkpoints]
    assert fps[0]["weights_sha256"] != fps[1]["weights_sha256"]
    assert fps[0]["config_sha256"] == fps[1]["config_sha256"] and fps[0]["n_layers"] == 2


def test_a_revision_loads_its_own_weights(offline):
    cfg = _model()
    model, tok = load_checkpoint(cfg, cfg.checkpoints[1])
    want = tiny_model("llama", seed=2).state_dict()
    got = model.state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert tok("en sun").input_ids[0] == 1  # the cached tokenizer came with it


def test_missing_revision_names_the_cached_ones(offline):
    cfg = _model(revisions=("global_step100", "global_step999"))
    with pytest.raises(ModelLoadError, match=r"'global_step999'.*cached revisions: global_step100, "
                                             r"global_step200, global_step300, main"):
        check_checkpoints(cfg)


def test_follow_hub_refs_lists_matching_revisions_offline(offline):
    found = hub_checkpoints(REPO, "global_step*")
    assert [(c.label, c.revision, c.step, c.path) for c in found] == [
        ("global_step100", "global_step100", 100, None), ("global_step200", "global_step200", 200, None),
        ("global_step300", "global_step300", 300, None)]
    assert hub_checkpoints(REPO, "main") and not hub_checkpoints(REPO, "nothing*")


def test_bin_only_revision_is_refused_before_any_load(offline):
    cfg = _model(BIN_REPO, ("global_step1000",))
    with pytest.raises(ModelLoadError, match=r"only .*\.bin.*model\.use_safetensors=false"):
        check_checkpoints(cfg)


def test_bin_only_revision_fails_to_load_without_the_override(offline):
    cfg = _model(BIN_REPO, ("global_step1000",))
    with pytest.raises(ModelLoadError, match=r"checkpoint 'step1000'.*safetensors"):
        load_checkpoint(cfg, cfg.checkpoints[0])


def test_bin_only_revision_loads_with_the_documented_override(offline):
    cfg = _model(BIN_REPO, ("global_step1000",), use_safetensors=False)
    check_checkpoints(cfg)
    model, _ = load_checkpoint(cfg, cfg.checkpoints[0])
    want = tiny_model("bloom", seed=4).state_dict()
    name = "transformer.h.0.mlp.dense_4h_to_h.weight"
    torch.testing.assert_close(model.state_dict()[name], want[name], rtol=0, atol=0)
