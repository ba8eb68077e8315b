"""workflows/train_trajectory.py, the Hydra app over conf/train.yaml: it trains what the library
trains, prints an override the pipeline accepts, writes nothing where it was launched, and
refuses bad values and changed configs with one line (no Ray, no corpus fetch: a jsonl corpus)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lingua_ray.config import CorpusConfig, LRSchedule, TrajectoryConfig, register_configs, to_run_config
from lingua_ray.models.loading import weight_hash
from lingua_ray.train import MANIFEST, read_manifest, train_trajectory

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "workflows" / "train_trajectory.py"
CONF = ROOT / "conf"

# Tiny sizes (seconds on one thread); the data is a local jsonl corpus, so nothing is fetched.
TINY = dict(tokenizer="bytes", hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
            max_position_embeddings=64, batch_size=4, seq_len=32, warmup_steps=2, eval_blocks=4, loss_window=3,
            heldout_units=4, num_threads=1)


def tiny_overrides(out_dir: Path, corpus: Path, steps: list[int], **extra) -> list[str]:
    kw = {**TINY, **extra}
    return [f"{k}={v}" for k, v in kw.items()] + [
        f"save_steps=[{','.join(map(str, steps))}]", f"out_dir={out_dir}",
        "corpus.source=jsonl", f"corpus.path={corpus}", "corpus.languages=[en,fr,zh]"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    rows = [{"uid": f"u{i}", "en": f"the quick brown fox {i} jumps.", "fr": f"le renard brun {i} saute.",
             "zh": f"狐狸 {i} 跳过了懒狗。"} for i in range(40)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run_app(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(APP), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """One app run: steps 0 and 3 into out/, launched from an empty folder."""
    base = tmp_path_factory.mktemp("app")
    cwd, out = base / "cwd", base / "out"
    cwd.mkdir()
    proc = run_app(tiny_overrides(out, corpus, [0, 3]), cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, out, proc


def _compose(name: str, overrides: list[str], **kw):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(name, overrides=overrides, **kw)


def test_app_saves_the_steps_and_writes_nothing_where_launched(trained):
    cwd, out, _ = trained
    assert [c["step"] for c in read_manifest(out)["checkpoints"]] == [0, 3]
    for s in (0, 3):
        assert (out / f"step{s}" / "model.safetensors").is_file() and (out / f"step{s}" / "config.json").is_file()
    assert (out / "optimizer.safetensors").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == [], "Hydra littered the launch folder"
    assert sorted(p.name for p in out.iterdir()) == ["optimizer.safetensors", "step0", "step3", MANIFEST]


def test_app_trains_what_the_library_trains(trained, corpus, tmp_path):
    _, out, _ = trained
    cfg = TrajectoryConfig(out_dir=str(tmp_path / "lib"), save_steps=[0, 3],
                           corpus=CorpusConfig(source="jsonl", path=str(corpus), languages=["en", "fr", "zh"]), **TINY)
    train_trajectory(cfg)
    app_m, lib_m = read_manifest(out), read_manifest(tmp_path / "lib")
    assert app_m["identity"] == lib_m["identity"]
    for a, b in zip(app_m["checkpoints"], lib_m["checkpoints"]):
        assert a["weights_sha256"] == b["weights_sha256"] == weight_hash(out / a["path"])
        assert (a["train_loss"], a["heldout_loss"]) == (b["train_loss"], b["heldout_loss"])


def test_app_prints_a_pipeline_command_that_composes(trained):
    _, out, proc = trained
    assert "step  train loss  held-out loss" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if "workflows/pipeline.py" in ln)
    argv = shlex.split(line)
    assert argv[:3] == ["python", "workflows/pipeline.py", "model=tiny-trajectory"]
    cfg = to_run_config(_compose("config", argv[2:]))
    assert list(cfg.corpus.languages) == ["en", "zh", "fr"]  # the trained ones, in the pipeline's order
    assert [(c.label, c.path, c.step) for c in cfg.model.checkpoints] == \
        [(f"step{s}", str(out / f"step{s}"), s) for s in (0, 3)]


def test_app_refuses_a_changed_config_in_one_line(trained, corpus):
    cwd, out, _ = trained
    proc = run_app(tiny_overrides(out, corpus, [0, 3], lr=1e-3), cwd)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_trajectory: ") and "different config (differs in ['lr'])" in last
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_recipe_is_the_schema_defaults_and_hydra_writes_nothing():
    from omegaconf import OmegaConf

    hydra_cfg = _compose("train", [], return_hydra_config=True).hydra
    assert hydra_cfg.job.chdir is False and hydra_cfg.output_subdir is None and hydra_cfg.run.dir == "."
    assert "filename" not in json.dumps(OmegaConf.to_container(hydra_cfg.job_logging)), "it would log to a file"
    assert to_run_config(_compose("train", []), TrajectoryConfig) == TrajectoryConfig()
    cfg = to_run_config(_compose("train", ["schedule=cosine", "save_steps=[0,5]", "num_threads=1"]), TrajectoryConfig)
    assert cfg.schedule is LRSchedule.cosine and cfg.save_steps == [0, 5] and cfg.num_threads == 1
    assert dataclasses.replace(cfg, schedule=LRSchedule.constant, save_steps=[0, 100, 300, 600],
                               num_threads=None) == TrajectoryConfig()


@pytest.mark.parametrize("override, reason", [
    ("schedule=linear", "expected one of [constant, cosine]"),
    ("save_steps=[0,x]", "'x' of type 'str' could not be converted to Integer"),
    ("hidden_sizes=8", "Key 'hidden_sizes' not in 'TrajectoryConfig'")])
def test_recipe_rejects_bad_values(override, reason):
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as err:
        _compose("train", [override])
    assert reason in str(err.value.__cause__)  # Hydra keeps the schema's (OmegaConf's) reason as the cause


def test_default_trajectory_needs_no_override():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_trajectory_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    default = TrajectoryConfig()
    root = Path(default.out_dir).expanduser()
    ckpts = [{"label": f"step{s}", "revision": None, "path": str(root / f"step{s}"), "step": s}
             for s in default.save_steps]
    # The command docs/trajectory.md shows: conf/model/tiny-trajectory.yaml already lists these checkpoints.
    assert app.pipeline_command(ckpts, default.corpus.languages) == \
        "python workflows/pipeline.py model=tiny-trajectory 'corpus.languages=[en,zh,fr,es,ar,id]'"
    more = ckpts + [{"label": "step700", "revision": None, "path": str(root / "step700"), "step": 700}]
    assert "'model.checkpoints=[{label:step0," in app.pipeline_command(more, default.corpus.languages)
