"""The cron follower (lingua_ray/follow.py, workflows/follow.py).

In this process on the local Ray: a tick computes the checkpoints it finds; a second tick is a
no-op that writes nothing (every file's mtime and size unchanged, through the real CLI too); a
checkpoint folder added later is the only one pending. Job mode's submission ids and retries run
against a stand-in job client here; on a real head (tests/test_submit.py) the follower submits an
added checkpoint, records only it, and its next tick is a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lingua_ray.config import CheckpointConfig, register_configs, to_run_config
from lingua_ray.follow import (FollowConfig, FollowError, checkpoints_override, plan, run_job, step_of,
                               submission_id, tick, watch_checkpoints)
from tiny_run import save_tiny, snapshot, tiny_overrides, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def _compose(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return to_run_config(compose("config", overrides=list(overrides)))


# ------------------------------------------------------------------------------- discovery


def test_step_of():
    names = ("step1200", "ckpt-1200", "global_step7", "final", "v2-rc")
    assert [step_of(n) for n in names] == [1200, 1200, 7, None, None]


def test_watch_finds_settled_model_folders_in_step_order(tmp_path):
    w = tmp_path / "w"
    for name in ("ckpt-200", "ckpt-30", "final"):
        (w / name).mkdir(parents=True)
        (w / name / "config.json").write_text("{}")
        (w / name / "model.safetensors").write_bytes(b"x")
    (w / "ckpt-400").mkdir()
    (w / "ckpt-400" / "config.json").write_text("{}")  # weights not written yet
    (w / "notes").mkdir()
    (w / ".ckpt-500.tmp").mkdir()
    (w / "README.md").write_text("not a folder")
    found = watch_checkpoints(str(w))
    assert [(c.label, c.step) for c in found] == [("ckpt-30", 30), ("ckpt-200", 200), ("final", None)]
    assert all(Path(c.path).is_absolute() and c.revision is None for c in found)
    said = []
    young = watch_checkpoints(str(w), min_age_s=3600, printer=lambda *a, **k: said.append(a[0]))
    assert young == [] and len(said) == 3 and "follow.min_age_s" in said[0]
    with pytest.raises(FollowError, match="follow.watch='/nope' is not a folder"):
        watch_checkpoints("/nope")


def test_checkpoints_override_composes_back(tmp_path):
    ckpts = [CheckpointConfig(label="step0", path=str(tmp_path / "a b" / "step0"), step=0),
             CheckpointConfig(label="global_step100", revision="global_step100", step=100),
             CheckpointConfig(label="null", path="/x/1e5", step=None), CheckpointConfig(label="300", path="/x,y")]
    text = checkpoints_override(ckpts)
    assert "label:step0," in text and "label:'null'" in text and "path:'/x,y'" in text
    cfg = _compose(["model=tiny-trajectory", text])
    assert cfg.model.checkpoints == ckpts
    with pytest.raises(FollowError, match="quote"):
        checkpoints_override([CheckpointConfig(label="it's")])


def test_nothing_to_follow_is_refused(tmp_path):
    cfg = _compose(["model=tiny-trajectory"])
    with pytest.raises(FollowError, match="give follow.watch"):
        plan(cfg, FollowConfig())
    with pytest.raises(FollowError, match="follow.hub_refs needs model.source=hub"):
        plan(cfg, FollowConfig(hub_refs="global_step*"))


# ------------------------------------------------------------------------------- job mode, stand-in client


@dataclass
class FakeJob:
    submission_id: str
    status: str
    metadata: dict = field(default_factory=dict)


class FakeClient:
    """The part of JobSubmissionClient the follower uses."""

    def __init__(self, jobs=()):
        self.jobs = {j.submission_id: j for j in jobs}
        self.submitted: list[dict] = []

    def list_jobs(self):
        return list(self.jobs.values())

    def submit_job(self, *, entrypoint, runtime_env, submission_id, metadata):
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: Job with submission_id {submission_id} "
                               "already exists.")
        self.submitted.append(dict(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                                   metadata=metadata))
        self.jobs[submission_id] = FakeJob(submission_id, "PENDING", metadata)
        return submission_id


@pytest.fixture
def job_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LINGUA_RAY_STORAGE_ROOT", str(tmp_path / "runs"))
    w = tmp_path / "w"
    for name in ("step0", "step100"):
        (w / name).mkdir(parents=True)
        (w / name / "config.json").write_text("{}")
        (w / name / "model.safetensors").write_bytes(b"x")
    overrides = tiny_overrides(tmp_path / "corpus.jsonl") + ["cluster=gpu", "cluster.gpus_per_actor=0"]
    cfg = _compose(overrides)
    fc = FollowConfig(watch=str(w), min_age_s=0, wait=False)
    p = plan(cfg, fc)
    return cfg, fc, p, [f"follow.watch={w}", *overrides]


def test_job_mode_submits_once_under_a_deterministic_id(job_setup):
    cfg, fc, p, overrides = job_setup
    assert p.new == ["step0", "step100"]
    sid = submission_id(cfg, p.checkpoints)
    assert sid == submission_id(cfg, list(reversed(p.checkpoints)))  # the set, not its order
    assert sid != submission_id(cfg, p.checkpoints[:1])
    assert sid.startswith("lingua-ray-follow-tiny-jsonl-")
    client = FakeClient()
    assert run_job(cfg, fc, p, overrides, "http://head:8265", client, printer=lambda *a, **k: None) == 0
    (job,) = client.submitted
    assert job["submission_id"] == sid
    assert job["metadata"] == {"lingua_ray_follow_store": p.store, "lingua_ray_follow_checkpoints": "step0,step100"}
    assert job["runtime_env"]["env_vars"]["LINGUA_RAY_STORAGE_ROOT"] == os.environ["LINGUA_RAY_STORAGE_ROOT"]
    import shlex

    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "workflows/pipeline.py", "cluster=gpu"]
    assert not any(a.startswith("follow.") for a in argv)
    assert f"run.out_dir={cfg.run.out_dir}" in argv and "run.name=tiny-jsonl" in argv  # pinned
    job_cfg = _compose(argv[3:])  # what the job's Hydra builds: the same folder, every checkpoint
    assert (job_cfg.run.out_dir, job_cfg.model.checkpoints) == (cfg.run.out_dir, p.checkpoints)


@pytest.mark.parametrize("existing,expect", [
    ([("", "RUNNING")], None), ([("", "PENDING")], None), ([("", "SUCCEEDED")], None),
    ([("", "FAILED")], "-retry1"), ([("", "FAILED"), ("-retry1", "STOPPED")], "-retry2"),
    ([("", "FAILED"), ("-retry1", "SUCCEEDED")], None),
])
def test_job_mode_noop_or_retry(job_setup, existing, expect):
    cfg, fc, p, overrides = job_setup
    sid = submission_id(cfg, p.checkpoints)
    # Old jobs of this id carry no store metadata: the id alone decides.
    client = FakeClient([FakeJob(sid + suffix, status) for suffix, status in existing])
    assert run_job(cfg, fc, p, overrides, "http://head:8265", client, printer=lambda *a, **k: None) == 0
    assert [j["submission_id"] for j in client.submitted] == ([] if expect is None else [sid + expect])


def test_job_mode_waits_for_a_running_job_on_the_same_store(job_setup):
    cfg, fc, p, overrides = job_setup
    other = FakeJob("lingua-ray-follow-tiny-jsonl-0123456789ab", "RUNNING", {"lingua_ray_follow_store": p.store})
    elsewhere = FakeJob("x", "RUNNING", {"lingua_ray_follow_store": "/other.zarr"})
    client = FakeClient([other])
    assert run_job(cfg, fc, p, overrides, "http://head:8265", client, printer=lambda *a, **k: None) == 0
    assert client.submitted == []
    client = FakeClient([elsewhere])
    run_job(cfg, fc, p, overrides, "http://head:8265", client, printer=lambda *a, **k: None)
    assert len(client.submitted) == 1


def test_job_mode_refuses_relative_outputs(job_setup, monkeypatch):
    cfg, fc, p, overrides = job_setup
    monkeypatch.delenv("LINGUA_RAY_STORAGE_ROOT")
    rel = _compose(overrides[1:])  # without follow.watch: the pipeline's own config
    from lingua_ray.config import ConfigError

    with pytest.raises(ConfigError, match="run.out_dir='runs/tiny-jsonl' is relative"):
        tick(rel, fc, overrides, address="http://head:8265", client=FakeClient())


# ------------------------------------------------------------------------------- in this process


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("follow_models")
    return {"step0": save_tiny(root / "step0", 0), "corpus": write_corpus(root / "corpus.jsonl")}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("ray_local")
def test_tick_twice_then_a_new_checkpoint_is_pending(models, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("LINGUA_RAY_STORAGE_ROOT", str(runs))
    watch = tmp_path / "train"
    watch.mkdir()
    shutil.copytree(models["step0"], watch / "step0")
    overrides = tiny_overrides(models["corpus"])
    cfg = _compose(overrides)
    fc = FollowConfig(watch=str(watch), min_age_s=0)
    out = runs / "tiny-jsonl"
    assert tick(cfg, fc, overrides) == 0
    res = json.loads((out / "results.json").read_text())
    assert [c["label"] for c in res["grid"]["checkpoints"]] == ["step0"]

    before = snapshot(out)
    said = []
    assert tick(cfg, fc, overrides, printer=lambda *a, **k: said.append(a[0])) == 0
    assert said == [f"[follow] nothing new: all 1 checkpoint(s) are done in {out / 'activations.zarr'}"]
    assert snapshot(out) == before, "a tick with nothing new changed files"

    # The real entry point, as cron runs it: exit 0, nothing written.
    env = {**os.environ, "LINGUA_RAY_STORAGE_ROOT": str(runs), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "workflows/follow.py", f"follow.watch={watch}", "follow.min_age_s=0",
                        *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[follow] nothing new: all 1 checkpoint(s)" in r.stdout
    assert snapshot(out) == before, "the CLI's no-op tick changed files"

    # A new folder makes the next tick run again, for it alone (the run itself: tests/test_submit.py).
    shutil.copytree(models["step0"], watch / "step100")
    again = plan(cfg, fc)
    assert again.new == ["step100"] and [c.label for c in again.checkpoints] == ["step0", "step100"]


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "LINGUA_RAY_STORAGE_ROOT": str(tmp_path)}
    r = subprocess.run([sys.executable, "workflows/follow.py", "model=tiny-trajectory"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith("error: FollowError: nothing to follow: give follow.watch=")
    r = subprocess.run([sys.executable, "workflows/follow.py", "follow.wacth=/x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "follow.wacth" in r.stderr
