"""Submitting to a real Ray head: `bash cluster/submit.sh` and `workflows/follow.py` in job mode.

A local head (tests/ray_head.py: free 127.0.0.1 ports, its own --temp-dir, token auth with its
own token file) runs the tiny pipeline submitted with the documented command; the outputs must
land under LINGUA_RAY_STORAGE_ROOT (not in Ray's temporary copy of the working dir). Then the
follower submits the one new checkpoint as a job, and a second tick is a no-op. Only the head
this module started is stopped. The submitter's own logic (quoting, checks) is tested first,
without a head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ray_head
from lingua_ray.submit import (CLUSTER_DEFAULT, ENTRY, SubmitError, check, entrypoint, members, parse_args,
                               runtime_env)
from tiny_run import save_tiny, snapshot, tiny_overrides, write_corpus

ROOT = Path(__file__).resolve().parents[1]
FIT_HEAD = ["cluster.gpus_per_actor=0", "cluster.num_actors=1", "cluster.cpus_per_actor=1"]  # 2 CPUs, no GPU


# ------------------------------------------------------------------------------- no head


def test_parse_args():
    o = parse_args(["--no-wait", "--submission-id", "x1", "--storage-root=/mnt/r", "-m", "model=a,b"])
    assert (o.wait, o.submission_id, o.storage_root, o.overrides) == (False, "x1", "/mnt/r", ["-m", "model=a,b"])
    assert parse_args(["model=a", "--no-wait"]).overrides == ["model=a", "--no-wait"]  # after the first: Hydra's
    with pytest.raises(SubmitError, match="unknown option '--bogus'"):
        parse_args(["--bogus"])


def test_entrypoint_reaches_hydra_as_typed():
    overrides = ["model=bloom-1b1", "store.path=s3://B/lr/${run.name}.zarr", "corpus.languages=[en, fr]",
                 "run.name='r,1'", "+experiment=quick", "-m", 'ablation.eval_corpus={source: jsonl, path: "a b.jsonl"}']
    line = entrypoint(overrides)
    # The head's /bin/sh parses the entrypoint once: what the command receives is exactly the list.
    r = subprocess.run(["sh", "-c", "printf '%s\\0' " + line], capture_output=True, check=True)
    assert r.stdout.decode().split("\0")[:-1] == [*ENTRY, CLUSTER_DEFAULT, *overrides]


def test_runtime_env_working_dir_and_storage_root(tmp_path):
    env = runtime_env(ROOT / "cluster" / "runtime_env.yaml", "/mnt/lr")
    assert env["working_dir"] == str(ROOT)  # '.' is the repository root, wherever the submitter runs
    assert env["env_vars"]["LINGUA_RAY_STORAGE_ROOT"] == "/mnt/lr"
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert "LINGUA_RAY_STORAGE_ROOT" not in runtime_env(ROOT / "cluster" / "runtime_env.yaml", None)["env_vars"]


def test_members_expand_the_sweep():
    got = members(["-m", "model=a,b", "corpus.languages=[en,fr],[de,es]", "reduce.tau=1"])
    assert got == [["model=a", "corpus.languages=[en,fr]", "reduce.tau=1"],
                   ["model=a", "corpus.languages=[de,es]", "reduce.tau=1"],
                   ["model=b", "corpus.languages=[en,fr]", "reduce.tau=1"],
                   ["model=b", "corpus.languages=[de,es]", "reduce.tau=1"]]


def test_check_refuses_before_submitting(monkeypatch):
    monkeypatch.delenv("LINGUA_RAY_STORAGE_ROOT", raising=False)
    with pytest.raises(SubmitError, match=r"run.out_dir='runs/bloom-560m-udhr' is relative.*LINGUA_RAY_STORAGE_ROOT"):
        check(["model=bloom-560m"], None)
    cfgs = check(["model=bloom-560m"], "/mnt/lr")
    assert cfgs[0].run.out_dir == "/mnt/lr/bloom-560m-udhr" and cfgs[0].cluster.address == "auto"
    member = r"\(member model=bloom-560m corpus.languages=\[en,fr\] reduce.tau=1\)"
    with pytest.raises(SubmitError, match=member + ".*at least 3"):
        check(["-m", "model=bloom-560m", "corpus.languages=[en,fr,de],[en,fr]", "reduce.tau=1"], "/mnt/lr")
    with pytest.raises(SubmitError, match="is a URL"):
        check(["model=bloom-560m"], "s3://bucket/runs")
    assert check(["model=bloom-560m", "store.path=s3://B/x.zarr", "run.out_dir=/abs/x"], None)[0].store.path == \
        "s3://B/x.zarr"


# ------------------------------------------------------------------------------- a real head


@pytest.fixture(scope="module")
def head():
    """One head for this module's tests (the tests using it are marked slow)."""
    h = ray_head.start(env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        yield h
    finally:
        ray_head.stop(h)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit")
    return {"step0": save_tiny(root / "models" / "step0", 0), "step100": save_tiny(root / "models" / "step100", 1),
            "corpus": write_corpus(root / "corpus.jsonl"), "runs": root / "runs", "root": root}


def _run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_token_auth_is_on_and_the_refusal_says_what_to_do(head, fixtures):
    env = head.client_env(LINGUA_RAY_STORAGE_ROOT=str(fixtures["runs"]))
    env.pop("RAY_AUTH_MODE")
    r = _run(["bash", "cluster/submit.sh", "--no-check", "model=tiny-trajectory"], env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refused the request" in r.stderr and "export RAY_AUTH_MODE=token" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def submitted(head, fixtures):
    """`bash cluster/submit.sh` of the tiny pipeline (step0), as docs/operations.md shows it."""
    overrides = tiny_overrides(fixtures["corpus"]) + FIT_HEAD
    overrides[overrides.index("corpus.languages=[en,fr,id]")] = "corpus.languages=[en, fr, id]"  # spaces survive
    ck = f"model.checkpoints=[{{label:step0,path:{fixtures['step0']},step:0}}]"
    env = head.client_env(LINGUA_RAY_STORAGE_ROOT=str(fixtures["runs"]))
    r = _run(["bash", "cluster/submit.sh", *overrides, ck], env)
    return r, overrides


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_submit_sh_runs_the_pipeline_and_outputs_are_durable(head, fixtures, submitted):
    r, _ = submitted
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "SUCCEEDED" in r.stdout.splitlines()[-1]
    out = fixtures["runs"] / "tiny-jsonl"  # $LINGUA_RAY_STORAGE_ROOT/<run.name>, as the docs say
    res = json.loads((out / "results.json").read_text())
    assert res["grid"]["languages"] == ["en", "fr", "id"]
    assert [c["label"] for c in res["grid"]["checkpoints"]] == ["step0"]
    assert res["run"]["store"] == str(out / "activations.zarr") and (out / "activations.zarr" / "zarr.json").is_file()
    assert (out / "report.html").is_file()
    # Hydra's log of the job: under the storage root too, beside (not inside) the run's out_dir.
    assert list((fixtures["runs"] / "hydra" / "tiny-jsonl").glob("*/pipeline.log"))
    # Nothing of the run inside Ray's temporary copy of the working dir.
    copies = list(head.temp_dir.glob("session_*/runtime_resources/working_dir_files/*"))
    assert copies, "the job ran from no working_dir copy?"
    for c in copies:
        assert not (c / "runs").exists() and not list(c.rglob("report.html")) and not list(c.rglob("*.zarr"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_follow_submits_only_the_new_checkpoint_then_is_a_noop(head, fixtures, submitted):
    assert submitted[0].returncode == 0
    _, overrides = submitted
    watch = fixtures["root"] / "train"
    watch.mkdir()
    for name in ("step0", "step100"):
        os.symlink(fixtures[name], watch / name)
    env = head.client_env(LINGUA_RAY_STORAGE_ROOT=str(fixtures["runs"]))
    cmd = [sys.executable, "workflows/follow.py", f"follow.watch={watch}", "follow.min_age_s=0", *overrides]
    r = _run(cmd, env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "[follow] 1 new checkpoint(s) step100: submitting job lingua-ray-follow-tiny-jsonl-" in r.stdout
    out = fixtures["runs"] / "tiny-jsonl"
    res = json.loads((out / "results.json").read_text())
    assert [c["label"] for c in res["grid"]["checkpoints"]] == ["step0", "step100"]
    history = json.loads((out / "record_stats.json").read_text())
    assert [(h["units_skipped"], h["units_recorded"]) for h in history] == [(0, 30), (30, 30)]  # resumed, not restarted

    from ray.job_submission import JobSubmissionClient

    token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()  # the head's own test token

    def follow_jobs():
        client = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})
        return sorted(j.submission_id for j in client.list_jobs()
                      if (j.submission_id or "").startswith("lingua-ray-follow-"))

    jobs = follow_jobs()
    assert len(jobs) == 1
    before = snapshot(out)
    r = _run(cmd, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[follow] nothing new: all 2 checkpoint(s) are done" in r.stdout
    assert follow_jobs() == jobs and snapshot(out) == before
