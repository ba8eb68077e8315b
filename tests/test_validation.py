"""Bad input is refused before any compute, in one line naming the key and what to do (issue 8)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hydra import compose, initialize_config_dir

from lingua_ray import pipeline
from lingua_ray.config import (CheckpointConfig, ConfigError, CorpusConfig, EvalCorpusConfig, ModelConfig,
                               ReduceConfig, RunConfig, RunInfo, Stage, register_configs, to_run_config, validate)
from pathlib import Path

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_configs()


def compose_run(*overrides) -> RunConfig:
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return to_run_config(compose("config", overrides=list(overrides)))


def base(**kw) -> RunConfig:
    cfg = RunConfig(corpus=CorpusConfig(source="jsonl", path="x.jsonl", languages=["en", "fr", "id", "zh", "ar", "hi"]))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_tau_above_bound_refused_with_hint():
    cfg = base(corpus=CorpusConfig(source="jsonl", path="x", languages=["en", "fr", "id"]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = one_line(e)
    assert "reduce.tau=2.0" in msg and "√(K−1) = 1.414" in msg and "reduce.key_mode=top_fraction" in msg
    cfg.reduce = ReduceConfig(tau=1.2)
    validate(cfg)


@pytest.mark.parametrize("frac", [None, 0.0, 1.0, 1.5])
def test_top_fraction_missing_or_outside(frac):
    with pytest.raises(ConfigError, match=r"reduce.top_fraction in \(0, 1\)"):
        validate(base(reduce=ReduceConfig(key_mode="top_fraction", top_fraction=frac)))


def test_too_few_languages():
    with pytest.raises(ConfigError, match="at least 3"):
        validate(base(corpus=CorpusConfig(source="jsonl", path="x", languages=["en", "fr"])))


def test_duplicate_checkpoint_labels():
    cfg = base(model=ModelConfig(source="local", checkpoints=[CheckpointConfig("final", path="a"),
                                                              CheckpointConfig("final", path="b")]))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "duplicate label(s) ['final']" in one_line(e)


def test_missing_checkpoint_folder_refused_before_any_write(tmp_path):
    out = tmp_path / "out"
    cfg = base(run=RunInfo(name="t", out_dir=str(out)),
               model=ModelConfig(name="m", source="local", gguf_package=None,
                                 checkpoints=[CheckpointConfig("s1", path=str(tmp_path / "nowhere"))]))
    with pytest.raises(Exception) as e:
        pipeline.run(cfg, [Stage.record])
    msg = one_line(e)
    assert "s1" in msg and "nowhere" in msg and "model.checkpoints[0].path" in msg
    assert not out.exists()  # a refused run changes nothing, config.resolved.json included


def test_heldout_split_leaving_too_few_units(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"uid": "u{i}", "en": "a{i}", "fr": "b{i}", "id": "c{i}"}}\n' for i in range(5)))
    from lingua_ray.stages.inputs import corpora

    cfg = base(corpus=CorpusConfig(source="jsonl", path=str(corpus), languages=["en", "fr", "id"]))
    cfg.reduce = ReduceConfig(tau=1.2)
    cfg.split.heldout_units = 4
    with pytest.raises(ValueError, match="split.heldout_units=4 leaves too few"):
        corpora(cfg)


@pytest.mark.parametrize("override,where", [("+reduce.tua=1", "reduce.tua"), ("+tua=1", "tua"),
                                            ("+ablation.eval_corpus.pth=x", "ablation.eval_corpus.pth")])
def test_unknown_keys_rejected_even_with_plus(override, where):
    with pytest.raises(ConfigError) as e:
        compose_run(override)
    msg = one_line(e)
    assert repr(where) in msg and "valid keys there" in msg
    if where == "reduce.tua":
        assert "Did you mean reduce.tau?" in msg


def test_bad_choice_lists_valid_values():
    with pytest.raises(Exception) as e:
        compose_run("model.dtype=bf16")
    text = str(e.value) + str(getattr(e.value, "__cause__", ""))
    assert "bfloat16" in text and "float32" in text


def _optional_dataclass_paths(schema, prefix=""):
    """Every sub-config node reachable by attribute path (the ones the CLI must be able to set)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield f"{prefix}{f.name}", tp
            yield from _optional_dataclass_paths(tp, f"{prefix}{f.name}.")


def test_every_sub_config_can_be_set_from_the_command_line():
    paths = dict(_optional_dataclass_paths(RunConfig))
    assert "ablation.eval_corpus" in paths
    for path, schema in paths.items():
        f = next(x for x in dataclasses.fields(schema)
                 if x.type in ("Optional[str]", "str", "Optional[int]", "int", "float"))
        value = "0.5" if f.type == "float" else "7" if "int" in str(f.type) else "zz"
        cfg = compose_run(f"{path}.{f.name}={value}")
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        assert str(getattr(node, f.name)) == value, path
    # The dict form too, for the optional eval corpus.
    cfg = compose_run("ablation.eval_corpus={source: jsonl, path: held.jsonl}")
    assert cfg.ablation.eval_corpus == EvalCorpusConfig(source="jsonl", path="held.jsonl")
    assert cfg.ablation.eval_corpus.corpus(["en", "fr", "id"]).languages == ["en", "fr", "id"]
    assert compose_run().ablation.eval_corpus.corpus(["en"]) is None  # default: the held-out split


def test_config_import_is_pure():
    import subprocess
    import sys

    code = ("import sys, lingua_ray.config; heavy = [m for m in ('torch', 'ray', 'zarr', 'transformers') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_entry_point_prints_one_line_unless_debug(tmp_path, debug):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("LINGUA_RAY_DEBUG", None)
    if debug:
        env["LINGUA_RAY_DEBUG"] = "1"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "workflows" / "pipeline.py"), "+reduce.tua=1",
                        f"run.out_dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert "unknown config key 'reduce.tua'" in r.stderr
    if debug:
        assert "Traceback" in r.stderr
    else:
        assert "Traceback" not in r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert lines[0].startswith("error: ConfigError: unknown config key") and len(lines) == 2, r.stderr
    assert not (tmp_path / "out").exists()  # a refused run creates nothing in its out_dir (Hydra's logs go elsewhere)
