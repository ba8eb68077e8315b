"""The deployment files in cluster/, docs/operations.md and the recipes in conf/.

Every YAML parses; the `ray up` config validates against Ray's own schema; no file carries a
credential; the commands they run name entry points and recipes that exist and whose Hydra
overrides compose into a RunConfig with durable outputs. No Ray is started here: cluster/submit.sh
runs against a real head in tests/test_submit.py; here only its refusals (no server needed).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from lingua_ray.config import RunConfig, register_configs, to_run_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONF = ROOT / "conf"
OPS_DOC = ROOT / "docs" / "operations.md"
LOCALHOST = {"127.0.0.1", "localhost"}
ENTRY = ["python", "workflows/pipeline.py"]


def _yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _compose(overrides) -> RunConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=list(overrides))
    return to_run_config(cfg)


def _recipes(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _pyproject_torch() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"torch\s*==", d)]
    return pin.split("==")[1].strip()


def _subset(expected, actual, where: str) -> None:
    """Every key/item of ``expected`` (a recipe's YAML) equals its counterpart in ``actual``."""
    if isinstance(expected, dict):
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing from the composed config"
            _subset(v, actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(expected) == len(actual), f"{where}: {len(actual)} items, recipe has {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _subset(e, a, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: composed {actual!r}, recipe says {expected!r}"


# ---------------------------------------------------------------------------------------------
# secrets

# Credential-like names: HF_TOKEN, AWS_SECRET_ACCESS_KEY, my_api_key, DB_PASSWORD (not TOKENIZERS_*,
# nor Kubernetes' own `key:` / `secretKeyRef:` fields).
SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)|_KEY(?:_|$)|(?:API|ACCESS)KEY",
                         re.I)
SECRET_VALUE = [re.compile(p) for p in (
    r"\bhf_[A-Za-z0-9]{20,}",                 # Hugging Face token
    r"\bAKIA[0-9A-Z]{16}\b",                  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",          # GitHub token
    r"\bsk-[A-Za-z0-9_-]{20,}",               # API keys of several services
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
)]
# An assignment of HF_TOKEN / RAY_AUTH_TOKEN to anything but a reference to the environment ("$HF_TOKEN").
TOKEN_ASSIGN = re.compile(r"(?:HF_TOKEN|RAY_AUTH_TOKEN)\s*[=:]\s*(?![\"']?\$)(?!\s*$)[\"']?[A-Za-z0-9_]")


def secret_findings(node, where: str = "") -> list[str]:
    """Where a parsed YAML tree writes a credential inline (empty list: none)."""
    out: list[str] = []
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and ("value" in node or "valueFrom" in node) and SECRET_NAME.search(name):
            ref = (node.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in node or not ref:
                out.append(f"{where}: env {name} must come from valueFrom.secretKeyRef, not a value")
        for k, v in node.items():
            here = f"{where}.{k}"
            if isinstance(k, str) and SECRET_NAME.search(k) and isinstance(v, (str, int, float)) and v != "":
                out.append(f"{here}: literal value for a credential")
            if k == "runtimeEnvYAML" and isinstance(v, str):
                out += secret_findings(yaml.safe_load(v), here)
            out += secret_findings(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += secret_findings(v, f"{where}[{i}]")
    elif isinstance(node, str):
        out += [f"{where}: looks like a credential" for p in SECRET_VALUE if p.search(node)]
    return out


def text_secret_findings(text: str, where: str) -> list[str]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        out += [f"{where}:{i}: looks like a credential" for p in SECRET_VALUE if p.search(line)]
        if TOKEN_ASSIGN.search(line):
            out.append(f"{where}:{i}: HF_TOKEN assigned a literal")
    return out


def test_secret_checker_catches_planted_secrets():
    planted = {
        "env": [{"name": "HF_TOKEN", "value": "abc"}, {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {}}],
        "env_vars": {"HF_TOKEN": "abc"},
        "runtimeEnvYAML": "env_vars:\n  MY_API_KEY: xyz\n",
        "note": "hf_" + "a" * 34,
    }
    found = secret_findings(planted)
    assert len(found) == 5, found
    assert text_secret_findings('export HF_TOKEN=hf_abc\nX="AKIA' + "A" * 16 + '"', "f") != []
    assert text_secret_findings("RAY_AUTH_TOKEN=3f2a9c", "f") != []
    assert text_secret_findings("RAY_AUTH_TOKEN_PATH=/home/u/.ray/auth_token\nRAY_AUTH_MODE=token", "f") == []
    assert text_secret_findings('--from-literal=HF_TOKEN="$HF_TOKEN"\nHF_TOKEN: $HF_TOKEN', "f") == []
    clean = {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}]}
    assert secret_findings(clean) == []


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.iterdir() if p.is_file()))
def test_no_inline_secrets(path):
    p = CLUSTER / path
    found = text_secret_findings(p.read_text(), path)
    if p.suffix == ".yaml":
        found += secret_findings(yaml.safe_load(p.read_text()), path)
    assert found == []


def test_every_cluster_yaml_parses():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert {"ray-cluster.yaml", "rayjob.yaml", "runtime_env.yaml"} <= set(names)
    for name in names:
        assert isinstance(_yaml(name), dict), f"cluster/{name} is not a YAML mapping"


# ---------------------------------------------------------------------------------------------
# KubeRay RayJob

def _pods(job: dict) -> list[tuple[str, dict]]:
    spec = job["spec"]["rayClusterSpec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    v = str(container["resources"]["limits"]["cpu"])
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def test_rayjob_shape():
    job = _yaml("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the head service must not be exposed"
    assert not job["spec"]["rayClusterSpec"].get("enableIngress", False)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_groups = [g for g in workers if any(_gpus(c) >= 1 for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for g in gpu_groups:
        for c in g["template"]["spec"]["containers"]:
            res = c["resources"]
            assert res["limits"].get("nvidia.com/gpu") == res.get("requests", res["limits"]).get("nvidia.com/gpu")


def test_rayjob_hf_token_only_from_secret():
    job = _yaml("rayjob.yaml")
    for group, g in _pods(job):
        for c in g["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert "HF_TOKEN" in env, f"{group}/{c['name']}: HF_TOKEN not passed (models load on every pod)"
            assert "value" not in env["HF_TOKEN"]
            ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"] == "HF_TOKEN"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "HF_TOKEN" not in runtime_env.get("env_vars", {})
    assert runtime_env["working_dir"]


def test_rayjob_entrypoint_composes_and_fits_the_cluster(monkeypatch):
    from lingua_ray.storage import STORAGE_ROOT_ENV, durable

    job = _yaml("rayjob.yaml")
    entry = job["spec"]["entrypoint"]
    # Two shells parse it (the submitter's and the head's): nothing they would expand or re-quote.
    assert not re.search(r"[$'\"\\`]", entry), entry
    argv = shlex.split(entry)
    assert argv[:2] == ENTRY
    # The job's storage root comes from its runtime env: outputs under it, not in the working_dir copy.
    monkeypatch.setenv(STORAGE_ROOT_ENV, yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"][STORAGE_ROOT_ENV])
    cfg = durable(_compose(argv[2:]), joining=True)
    assert cfg.cluster.address == "auto" and cfg.cluster.gpus_per_actor >= 1
    assert cfg.model.name == "bloom-560m" and len(cfg.model.checkpoints) > 1
    assert cfg.store.path and cfg.store.path.startswith("s3://")
    # run.out_dir must outlive the cluster and be one directory for every pod: a mounted volume.
    assert os.path.isabs(cfg.run.out_dir)
    for group, g in _pods(job):
        for c in g["template"]["spec"]["containers"]:
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert any(cfg.run.out_dir.startswith(m.rstrip("/") + "/") for m in mounts), \
                f"{group}/{c['name']}: run.out_dir {cfg.run.out_dir} is on no mounted volume ({mounts})"
    # Each replica needs one pod's worth of GPUs/CPUs; surplus replicas would wait forever.
    fits = 0
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        (c,) = g["template"]["spec"]["containers"]
        per_pod = min(_gpus(c) // cfg.cluster.gpus_per_actor, _cpus(c) // cfg.cluster.cpus_per_actor)
        fits += int(per_pod) * int(g.get("maxReplicas", g["replicas"]))
    assert fits >= cfg.cluster.num_actors, f"{cfg.cluster.num_actors} replicas, room for {fits}"


def test_rayjob_image_carries_the_working_dir():
    job = _yaml("rayjob.yaml")
    wd = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    images = {c["image"] for _, g in _pods(job) for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers must run one image, got {images}"
    if wd.startswith("/"):  # a path in the submitter pod (the head's image): cluster/Dockerfile puts the code there
        docker = (CLUSTER / "Dockerfile").read_text()
        assert re.search(rf"^WORKDIR\s+{re.escape(wd)}\s*$", docker, re.M)
        for part in ("lingua_ray", "conf", "workflows"):
            assert re.search(rf"^COPY\b.*\s{part}\s", docker, re.M), f"Dockerfile does not copy {part}/"


# ---------------------------------------------------------------------------------------------
# ray up

def test_ray_cluster_validates_like_ray_up():
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before it touches the cloud: fill in the provider defaults, check the schema.
    validate_config(prepare_config(_yaml("ray-cluster.yaml")))


def _commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k) or []]


def test_ray_cluster_dashboard_on_localhost():
    cfg = _yaml("ray-cluster.yaml")
    hosts = re.findall(r"--dashboard-host[= ](\S+)", " ".join(_commands(cfg)))
    assert hosts, "head_start_ray_commands should pin --dashboard-host to localhost"
    assert set(hosts) <= LOCALHOST, hosts
    assert any("--dashboard-host" in c for c in cfg["head_start_ray_commands"])
    assert "0.0.0.0" not in " ".join(_commands(cfg))


def test_ray_cluster_installs_cuda_torch_then_the_project():
    cfg = _yaml("ray-cluster.yaml")
    setup = cfg["setup_commands"]
    torch_i = [i for i, c in enumerate(setup) if f"torch=={_pyproject_torch()}" in c]
    assert torch_i, f"no setup command installs the pyproject's torch=={_pyproject_torch()}"
    assert re.search(r"--index-url\s+https://download\.pytorch\.org/whl/cu\d+", setup[torch_i[0]])
    remote = [r for r, local in cfg["file_mounts"].items() if local in (".", "./")]
    assert remote, "the project is not mounted on the nodes"
    proj_i = [i for i, c in enumerate(setup) if re.search(rf"pip install .*-e\s+{re.escape(remote[0])}\b", c)]
    assert proj_i and proj_i[0] > torch_i[0], "install torch's CUDA build before the project"
    assert {".venv", "runs"} <= set(cfg["rsync_exclude"])
    image = cfg.get("docker", {}).get("image", "")
    if image:
        import ray

        assert ray.__version__ in image and "py311" in image, f"{image}: Ray {ray.__version__}, Python 3.11"


@pytest.mark.parametrize("recipe", ["gpu", "gpu-4x"])
def test_ray_cluster_has_room_for_recipe(recipe):
    cfg = _yaml("ray-cluster.yaml")
    cl = _compose([f"cluster={recipe}"]).cluster
    room = 0
    for name, t in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        r = t["resources"]
        per_node = min(r.get("GPU", 0) // cl.gpus_per_actor, r.get("CPU", 0) // cl.cpus_per_actor)
        room += int(per_node) * t["max_workers"]
    assert room >= cl.num_actors, f"cluster={recipe} starts {cl.num_actors} replicas; the cluster holds {room}"


# ---------------------------------------------------------------------------------------------
# runtime env

def _uploaded(root: Path, excludes: list[str]) -> tuple[list[Path], list[Path]]:
    """(files uploaded, every path visited) by Ray's own working_dir walk with these excludes."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    visited: list[Path] = []
    _dir_travel(root, [_get_excludes(root, excludes)], visited.append, include_gitignore=False)
    return [p for p in visited if p.is_file()], visited


def test_runtime_env_fields():
    env = _yaml("runtime_env.yaml")
    assert env["working_dir"] == "."
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert not any(SECRET_NAME.search(k) for k in env["env_vars"]), env["env_vars"]


def test_runtime_env_excludes(tmp_path):
    excludes = _yaml("runtime_env.yaml")["excludes"]
    keep = ["lingua_ray/config.py", "lingua_ray/runs_util.py", "workflows/pipeline.py", "conf/config.yaml",
            "cluster/runtime_env.yaml", "tests/corpus/runs.jsonl"]
    drop = [".venv/lib/python3.11/site-packages/torch/__init__.py", "runs/x/activations.zarr/zarr.json",
            "runs/x/results.json", "store.zarr/c/0/0", ".git/HEAD", "lingua_ray/__pycache__/config.cpython-311.pyc"]
    for rel in keep + drop:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files, visited = _uploaded(tmp_path, list(excludes))
    got = {str(p.relative_to(tmp_path)) for p in files}
    assert got == set(keep)
    # A directory pattern must prune the walk: Ray should never list the files of .venv or runs.
    assert not any(str(p.relative_to(tmp_path)).startswith((".venv/", "runs/", ".git/")) for p in visited)


def test_runtime_env_upload_of_this_tree_is_small():
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING

    files, _ = _uploaded(ROOT, list(_yaml("runtime_env.yaml")["excludes"]))
    size = sum(p.stat().st_size for p in files)
    assert size < PACKAGE_SIZE_WARNING, f"working_dir upload would be {size / 2**20:.0f} MiB"
    names = {str(p.relative_to(ROOT)) for p in files}
    assert {"workflows/pipeline.py", "conf/config.yaml", "lingua_ray/config.py"} <= names


# ---------------------------------------------------------------------------------------------
# crontab

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _cron_jobs(text: str, commented: bool = False) -> list[tuple[list[str], str]]:
    """(5 time fields, command) of each job line; ``commented``: the example lines behind '# '."""
    jobs = []
    for line in text.splitlines():
        s = line.strip()
        if commented:
            if not s.startswith("# "):
                continue
            s = s[2:]
            if not re.match(r"^[\d*]", s):
                continue
        elif not s or s.startswith("#") or re.match(r"^[A-Z_]+=", s):
            continue
        parts = s.split(None, 5)
        assert len(parts) == 6, f"crontab line has no 5 time fields and a command: {line!r}"
        jobs.append((parts[:5], parts[5]))
    return jobs


def _check_cron_fields(fields: list[str]) -> None:
    for f, (lo, hi) in zip(fields, CRON_RANGES):
        assert CRON_FIELD.match(f), f"bad cron field {f!r}"
        for n in map(int, re.findall(r"(?<![/\d])\d+", f)):
            assert lo <= n <= hi, f"cron field {f!r} out of range {lo}-{hi}"


def _entry_overrides(command: str) -> tuple[str, list[str]]:
    """(entry point, Hydra overrides) of a cron command running cluster/submit.sh or workflows/follow.py."""
    entry = "cluster/submit.sh" if "cluster/submit.sh" in command else "workflows/follow.py"
    argv = shlex.split(command.split(entry, 1)[1].split(";", 1)[0])
    return entry, [a for a in argv if not a.startswith("--")]


def _cron_env(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))


def test_crontab_jobs_parse_lock_and_log():
    text = (CLUSTER / "crontab.example").read_text()
    jobs = _cron_jobs(text)
    assert len(jobs) == 2, "a nightly submission and a follower"
    for fields, cmd in jobs + _cron_jobs(text, commented=True):
        _check_cron_fields(fields)
        assert re.search(r"\bflock\s+(-\S+\s+(\d+\s+)?)*\S+\.lock\s", cmd), f"no flock around the run: {cmd}"
        assert "cluster/submit.sh" in cmd or "workflows/follow.py" in cmd
        assert "%" not in cmd, "cron turns % into a newline"
        assert re.search(r">>\s*\S+.*2>&1", cmd), "the run is not logged to a file"
    env = _cron_env(text)
    assert re.match(r"https?://(127\.0\.0\.1|localhost):8265$", env["RAY_ADDRESS"])
    assert env["RAY_AUTH_MODE"] == "token", "a Ray 2.60 head with a token refuses clients without it"
    assert os.path.isabs(env["LINGUA_RAY_STORAGE_ROOT"])


def test_crontab_overrides_compose_with_durable_outputs(monkeypatch):
    from lingua_ray.storage import durable

    text = (CLUSTER / "crontab.example").read_text()
    monkeypatch.setenv("LINGUA_RAY_STORAGE_ROOT", _cron_env(text)["LINGUA_RAY_STORAGE_ROOT"])
    (_, nightly), (_, follow) = _cron_jobs(text)
    (_, hub), = _cron_jobs(text, commented=True)
    entry, overrides = _entry_overrides(nightly)
    cfg = durable(_compose(["cluster=gpu", *overrides]), joining=True)
    assert entry == "cluster/submit.sh"
    assert cfg.store.path == f"s3://BUCKET/lingua_ray/{cfg.run.name}.zarr"
    assert cfg.run.out_dir == f"/mnt/lingua_ray/runs/{cfg.run.name}"
    assert len(cfg.model.checkpoints) > 1, "the nightly job follows a recipe that lists checkpoints"
    for cmd, key in ((follow, "follow.watch"), (hub, "follow.hub_refs")):
        entry, overrides = _entry_overrides(cmd)
        assert entry == "workflows/follow.py"
        given = dict(o.split("=", 1) for o in overrides if o.startswith("follow."))
        assert key in given, cmd
        cfg = durable(_compose(["cluster=gpu", *[o for o in overrides if not o.startswith("follow.")]]), joining=True)
        assert os.path.isabs(cfg.run.out_dir)
    assert os.path.isabs(dict(o.split("=", 1) for o in _entry_overrides(follow)[1])["follow.watch"])


# ---------------------------------------------------------------------------------------------
# cluster/submit.sh: a thin wrapper over lingua_ray/submit.py (the real head: tests/test_submit.py)

def _submit_sh(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LINGUA_RAY_STORAGE_ROOT")}
    e.update(env or {})
    # From another directory: the script finds the repository itself.
    return subprocess.run(["bash", str(CLUSTER / "submit.sh"), *args], env=e, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_submit_sh_refuses_outputs_inside_rays_working_dir_copy(tmp_path):
    r = _submit_sh(tmp_path, "model=bloom-1b1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("submit: refused: run.out_dir='runs/bloom-1b1-udhr' is relative"), r.stderr
    assert "LINGUA_RAY_STORAGE_ROOT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_submit_sh_refuses_unknown_options_and_bad_configs(tmp_path):
    r = _submit_sh(tmp_path, "--wait-forever", "model=bloom-1b1")
    assert r.returncode == 2 and "unknown option '--wait-forever'" in r.stderr
    r = _submit_sh(tmp_path, "model=bloom-1b1", "reduce.tua=1", env={"LINGUA_RAY_STORAGE_ROOT": "/mnt/x"})
    assert r.returncode == 2 and "reduce.tua" in r.stderr


# ---------------------------------------------------------------------------------------------
# entry points, recipes and docs

def test_one_pipeline_entry_point():
    # Stages are chosen with stages=[...] on the one entry point; no per-stage copies.
    assert not any((ROOT / "workflows" / f"{s}.py").exists() for s in ("record", "reduce", "ablate", "report"))


def test_entry_points_exist():
    for rel in ["workflows/pipeline.py", "workflows/run_default.sh", "conf/cluster/gpu.yaml",
                "conf/cluster/gpu-4x.yaml", "cluster/submit.sh", "workflows/follow.py", "conf/follow.yaml"]:
        assert (ROOT / rel).is_file(), rel


def test_paths_and_recipes_named_in_docs_and_cluster_files_exist():
    sources = [OPS_DOC] + sorted(p for p in CLUSTER.iterdir() if p.is_file())
    for src in sources:
        text = src.read_text()
        for rel in re.findall(r"\b((?:cluster|workflows|conf|docs)/[\w.\-/]*\w\.(?:py|sh|yaml|example|md)"
                              r"|cluster/Dockerfile)\b", text):
            assert (ROOT / rel).is_file(), f"{src.name} names {rel}, which does not exist"
        for group, names in re.findall(r"(?<![\w.+])(model|corpus|cluster)=([\w\-,.]+)", text):
            for name in filter(None, names.rstrip(".").split(",")):
                assert (CONF / group / f"{name}.yaml").is_file(), f"{src.name}: no recipe {group}={name}"


@pytest.mark.parametrize("group,name", [(g, n) for g in ("model", "corpus", "cluster") for n in _recipes(g)
                                        if (g, n) != ("corpus", "jsonl")])
def test_recipe_composes(group, name):
    cfg = _compose([f"{group}={name}"])
    recipe = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    _subset(recipe, dataclasses.asdict(getattr(cfg, group)), group)
    if group == "model":
        assert cfg.model.trust_remote_code is False and cfg.model.use_safetensors is True
        assert len({c.label for c in cfg.model.checkpoints}) == len(cfg.model.checkpoints)
    if group == "cluster":
        assert cfg.cluster.dashboard_host in LOCALHOST


def test_experiment_recipe_composes():
    cfg = _compose(["+experiment=quick"])
    recipe = yaml.safe_load((CONF / "experiment" / "quick.yaml").read_text())
    _subset(recipe, dataclasses.asdict(cfg), "experiment")


def test_jsonl_recipe_without_path_fails_clearly_at_load():
    from lingua_ray.corpus import CorpusError, load_corpus

    cfg = _compose(["corpus=jsonl"])
    assert cfg.corpus.path is None
    with pytest.raises(CorpusError, match="path"):
        load_corpus(cfg.corpus)


def test_jsonl_recipe_with_path_and_languages():
    cfg = _compose(["corpus=jsonl", "corpus.path=x.jsonl", "corpus.languages=[en,fr]"])
    assert cfg.corpus.source == "jsonl" and cfg.corpus.path == "x.jsonl" and cfg.corpus.languages == ["en", "fr"]
