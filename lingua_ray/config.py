"""The run config: one typed dataclass per component, registered in Hydra's ConfigStore.

Each component owns its dataclass next to its code (``CorpusConfig`` in corpus/,
``ModelConfig`` in models/, ``CaptureConfig`` in capture.py, ``StoreConfig`` in
store.py); the ones without a home module live here. ``conf/`` holds recipes
that fill these schemas; ``resolved(cfg)`` is what gets saved beside results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from lingua_ray.capture import CaptureConfig
from lingua_ray.corpus import CorpusConfig
from lingua_ray.models.loading import CheckpointConfig, ModelConfig
from lingua_ray.store import StoreConfig


@dataclass
class RunInfo:
    """name: used in output paths. out_dir: where results, report and (by default) the store go."""

    name: str = "gemma3-270m-udhr"
    out_dir: str = "runs/${run.name}"


@dataclass
class SplitConfig:
    """Which units pick neurons and which are held out for perplexity.

    heldout_units: units drawn (seeded) from the corpus and never recorded for selection;
        the ablation evaluates perplexity on them. 0 disables the split.
    """

    heldout_units: int = 16
    seed: int = 0


@dataclass
class ClusterConfig:
    """Ray resources.

    address: None/"" starts a local Ray; "auto" joins the cluster (``ray job submit``).
    num_actors: recorder replicas; gpus_per_actor > 1 spreads one replica over several GPUs
        of a node (device_map="auto"), for models larger than one GPU.
    """

    address: Optional[str] = None
    num_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    max_restarts: int = 3
    max_task_retries: int = 3
    reducer_cpus: float = 1.0
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    num_cpus: Optional[int] = None  # local Ray only


@dataclass
class ReduceConfig:
    """Scoring settings (docs/metrics.md).

    statistic: which recorded per-unit statistic the metrics read ("mean" per METHOD.md).
    key_mode: "zscore" (z > tau) or "top_fraction".
    """

    statistic: str = "mean"
    tau: float = 2.0
    key_mode: str = "zscore"
    top_fraction: Optional[float] = None
    n_boot: int = 1000
    n_perm: int = 1000
    seed: int = 0
    ci_level: float = 0.95


@dataclass
class AblationConfig:
    """Deactivation (docs/ablation.md). n_random: matched random repeats R per language."""

    enabled: bool = True
    n_random: int = 3
    seed: int = 0
    token_budget: int = 4096
    max_tokens: int = 512
    exclude_mask: bool = False  # False: controls drawn from the whole layer, as METHOD.md
    eval_corpus: Optional[CorpusConfig] = None  # None: the held-out split of the run's corpus


@dataclass
class RunConfig:
    run: RunInfo = field(default_factory=RunInfo)
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    stages: list[str] = field(default_factory=lambda: ["record", "reduce", "ablate", "report"])


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` is type-checked by Hydra."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="corpus", name="corpus_schema", node=CorpusConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    cs.store(group="store", name="store_schema", node=StoreConfig)


def to_run_config(cfg: Any) -> RunConfig:
    """A RunConfig from an OmegaConf DictConfig (resolving interpolations) or a dict."""
    from omegaconf import OmegaConf

    if isinstance(cfg, RunConfig):
        return cfg
    base = OmegaConf.structured(RunConfig)
    merged = OmegaConf.merge(base, cfg)
    OmegaConf.resolve(merged)
    return OmegaConf.to_object(merged)


def resolved(cfg: RunConfig) -> dict:
    """The plain-dict config saved beside results (no secrets: tokens come from the environment)."""
    return dataclasses.asdict(cfg)


def fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


__all__ = [
    "AblationConfig", "CaptureConfig", "CheckpointConfig", "ClusterConfig", "CorpusConfig", "ModelConfig",
    "ReduceConfig", "RunConfig", "RunInfo", "SplitConfig", "StoreConfig", "register_configs", "resolved",
    "to_run_config", "fingerprint",
]
