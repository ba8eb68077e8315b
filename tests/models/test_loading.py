"""Loading checkpoints, weight fingerprints, and the dtype/source choices."""

import os

import pytest
import torch

from lingua_ray import config
from lingua_ray.models.loading import (GGUF_PACKAGES, CheckpointConfig, DType, ModelConfig, ModelLoadError,
                                       ModelSource, load_checkpoint, model_fingerprint, resolve_checkpoint,
                                       torch_dtype, weight_hash)
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    """Every test gets its own digest cache: none writes to ~/.cache or sees another's entries."""
    monkeypatch.setenv("LINGUA_RAY_HASH_CACHE", str(tmp_path / "hash-cache.json"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    tiny_model("gpt_neox").save_pretrained(d / "a", safe_serialization=True)
    tiny_tokenizer().save_pretrained(d / "a")
    tiny_model("gpt_neox", seed=1).save_pretrained(d / "b", safe_serialization=True)
    tiny_tokenizer().save_pretrained(d / "b")
    return d


def test_local_folder_loads_in_eval_mode_float32(saved):
    cfg = ModelConfig(name="t", source="local", hf_id=str(saved / "a"), gguf_package=None)
    model, tok = load_checkpoint(cfg, cfg.checkpoints[0])
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tok.padding_side == "right"


def test_fingerprint_tracks_weights(saved):
    cfg = ModelConfig(name="t", source="local", gguf_package=None)
    fa = model_fingerprint(cfg, CheckpointConfig(label="a", path=str(saved / "a")))
    fa2 = model_fingerprint(cfg, CheckpointConfig(label="x", path=str(saved / "a")))
    fb = model_fingerprint(cfg, CheckpointConfig(label="b", path=str(saved / "b")))
    assert fa == fa2 and fa["weights_sha256"] != fb["weights_sha256"]
    assert fa["config_sha256"] == fb["config_sha256"]
    assert (fa["model_type"], fa["n_layers"], fa["n_neurons"]) == ("gpt_neox", 2, 28)


def test_weight_hash_uses_hub_blob_names(tmp_path):
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    snap = tmp_path / "snap"
    snap.mkdir()
    os.symlink(blob, snap / "model.safetensors")
    h1 = weight_hash(snap)
    blob.write_bytes(b"other")  # the blob name is the content hash: not re-read
    assert weight_hash(snap) == h1
    with pytest.raises(ModelLoadError, match="no weight files"):
        weight_hash(tmp_path / "blobs")


def test_safetensors_only_by_default(saved, tmp_path):
    m = tiny_model("llama")
    (tmp_path / "bin").mkdir()
    m.config.save_pretrained(tmp_path / "bin")
    torch.save(m.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # a pickle: never loaded by default
    tiny_tokenizer().save_pretrained(tmp_path / "bin")
    cfg = ModelConfig(name="t", source="local", hf_id=str(tmp_path / "bin"), gguf_package=None)
    with pytest.raises((ModelLoadError, OSError, ValueError)):
        load_checkpoint(cfg, cfg.checkpoints[0])


def test_resolution_and_errors():
    hub = ModelConfig(name="b", source="hub", hf_id="bigscience/bloom-560m", gguf_package=None)
    assert resolve_checkpoint(hub, CheckpointConfig(label="s", revision="global_step1000")) == \
        ("bigscience/bloom-560m", "global_step1000")
    with pytest.raises(ModelLoadError, match="needs hf_id"):
        resolve_checkpoint(ModelConfig(name="x", source="hub", hf_id=None), CheckpointConfig())
    with pytest.raises(ModelLoadError, match="unknown source"):
        resolve_checkpoint(ModelConfig(name="x", source="ftp"), CheckpointConfig())
    with pytest.raises(ModelLoadError, match=r"unknown GGUF package 'nope'; valid: gemma3-270m, smollm2-135m"):
        resolve_checkpoint(ModelConfig(name="x", source="gguf", gguf_package="nope"), CheckpointConfig())
    assert torch_dtype("auto", "cpu") == torch.float32 and torch_dtype("auto", "cuda:0") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp8' in model.dtype; valid: auto, float32"):
        torch_dtype("fp8", "cpu")


def test_config_classes_live_in_lingua_ray_config():
    from lingua_ray.models import loading

    assert loading.ModelConfig is config.ModelConfig and loading.CheckpointConfig is config.CheckpointConfig
    assert ModelConfig().source is ModelSource.gguf and ModelConfig().dtype is DType.auto
    assert "gemma3-270m" in GGUF_PACKAGES and "smollm2-135m" in GGUF_PACKAGES


@pytest.mark.parametrize("name, device, expected", [
    (DType.auto, "cpu", torch.float32), (DType.auto, "cuda", torch.bfloat16), (DType.float16, "cpu", torch.float16),
    (DType.bfloat16, "cpu", torch.bfloat16), ("float32", "cuda:1", torch.float32), ("bfloat16", "cpu", torch.bfloat16),
])
def test_torch_dtype_takes_the_enum_or_its_value(name, device, expected):
    assert torch_dtype(name, device) == expected


def test_source_enum_and_its_value_resolve_alike(saved):
    for source in (ModelSource.local, "local"):
        cfg = ModelConfig(name="t", source=source, hf_id=str(saved / "a"), gguf_package=None)
        assert resolve_checkpoint(cfg, cfg.checkpoints[0]) == (str(saved / "a"), None)


def test_trust_remote_code_off_by_default():
    assert ModelConfig().trust_remote_code is False and ModelConfig().use_safetensors is True


def test_hub_hash_from_metadata_matches_offline_cache(tmp_path, monkeypatch):
    """Online: the hub's LFS sha256 per file, no download. Offline: the cache's blob names. Same hash."""
    import types

    import huggingface_hub

    from lingua_ray.models.loading import hub_weight_hash

    sha = "cd" * 32
    sib = [types.SimpleNamespace(rfilename="model.safetensors", lfs=types.SimpleNamespace(sha256=sha), blob_id="x"),
           types.SimpleNamespace(rfilename="config.json", lfs=None, blob_id="y")]

    class FakeApi:
        def model_info(self, repo_id, revision=None, files_metadata=False):
            assert files_metadata and revision == "global_step10"
            return types.SimpleNamespace(siblings=sib)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    online = hub_weight_hash("org/model", "global_step10")

    blob = tmp_path / "blobs" / sha
    blob.parent.mkdir()
    blob.write_bytes(b"w")
    snap = tmp_path / "snap"
    snap.mkdir()
    os.symlink(blob, snap / "model.safetensors")

    class Offline:
        def model_info(self, *a, **k):
            raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snap))
    assert hub_weight_hash("org/model", "global_step10") == online
