"""Loading a config from Hydra/OmegaConf (unknown keys refused) and the cross-field rules.

Pure like config.py (no torch, Ray or Zarr); its public names are re-exported by lingua_ray.config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lingua_ray.config import (CaptureConfig, ConfigError, CriterionName, KeyMode, ReduceConfig, RunConfig,
                               Statistic)
from lingua_ray.criteria_settings import CRITERION_STATISTICS


def to_run_config(cfg: Any, schema: type = RunConfig):
    """A ``schema`` instance from an OmegaConf DictConfig (resolving interpolations) or a dict.

    Unknown keys are errors, ``+key=value`` additions included (Hydra lets ``+`` add a key to
    a typed node), so a typo such as ``+reduce.tua=1`` is refused instead of silently dropped.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, schema):
        return cfg
    _check_keys(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg), schema, "")
    base = OmegaConf.structured(schema)
    merged = OmegaConf.merge(base, cfg)
    OmegaConf.resolve(merged)
    return OmegaConf.to_object(merged)


def _check_keys(node: Any, schema: type, prefix: str) -> None:
    import difflib
    import typing

    from omegaconf import DictConfig, ListConfig

    hints = typing.get_type_hints(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys() if isinstance(node, DictConfig) else []:
        if key == "hydra":
            continue
        where = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {where!r}; valid keys there: {', '.join(valid)}.{hint}")
        sub = _dataclass_of(hints[key])
        value = node._get_node(key)
        if sub is not None and isinstance(value, DictConfig) and not value._is_none():
            _check_keys(value, sub, f"{where}.")
        elif sub is not None and isinstance(value, ListConfig):
            for i, item in enumerate(value):
                if isinstance(item, DictConfig):
                    _check_keys(item, sub, f"{where}[{i}].")


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``X``, ``Optional[X]`` or ``list[X]``, else None."""
    import typing

    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_of(arg)
        if found is not None:
            return found
    return None




def check_capture(c: CaptureConfig, where: str = "capture") -> None:
    valid = [s.value for s in Statistic]
    bad = [s for s in c.statistics if getattr(s, "value", s) not in valid]
    if bad:
        raise ConfigError(f"{where}.statistics has unknown {bad}; valid: {', '.join(valid)}")
    stats = [Statistic(s) for s in c.statistics]
    if not stats:
        raise ConfigError(f"{where}.statistics is empty; choose from {[s.value for s in Statistic]}")
    if len(set(stats)) != len(stats):
        raise ConfigError(f"{where}.statistics has duplicates: {[s.value for s in stats]}")
    if c.max_tokens < 1:
        raise ConfigError(f"{where}.max_tokens={c.max_tokens} must be ≥ 1")
    if c.token_budget < c.max_tokens:
        raise ConfigError(f"{where}.token_budget ({c.token_budget}) must be ≥ {where}.max_tokens ({c.max_tokens})")


def check_key_selection(r: ReduceConfig, n_languages: int) -> None:
    """tau and top_fraction against K: z ≤ √(K−1), so a tau at or above it selects nothing."""
    if KeyMode(r.key_mode) is KeyMode.top_fraction:
        if r.top_fraction is None or not 0 < r.top_fraction < 1:
            raise ConfigError(f"reduce.key_mode=top_fraction needs reduce.top_fraction in (0, 1), "
                              f"got {r.top_fraction}")
        return
    bound = math.sqrt(max(n_languages - 1, 0))
    if r.tau >= bound:
        raise ConfigError(f"reduce.tau={r.tau} can select no neuron with {n_languages} languages "
                          f"(a z-score across K languages is at most √(K−1) = {bound:.3f}); lower reduce.tau "
                          "or use reduce.key_mode=top_fraction reduce.top_fraction=0.01")


def criterion_names(names, where: str) -> list[str]:
    """Plain criterion names of ``where`` (a config key), checked: known, unique, not empty."""
    valid = [c.value for c in CriterionName]
    plain = [getattr(n, "value", n) for n in names]
    bad = [n for n in plain if n not in valid]
    if bad:
        raise ConfigError(f"{where} has unknown criterion {bad[0]!r}; valid: {', '.join(valid)}")
    if not plain:
        raise ConfigError(f"{where} is empty; choose from {', '.join(valid)}")
    if len(set(plain)) != len(plain):
        raise ConfigError(f"{where} has duplicates: {plain}")
    return plain


def _rate(value, where: str, lo_open: bool = True) -> None:
    if value is None or not (0 < value <= 1 if lo_open else 0 <= value <= 1):
        raise ConfigError(f"{where}={value} must be in {'(0, 1]' if lo_open else '[0, 1]'}")


def check_criteria(cfg: RunConfig) -> None:
    """reduce.criteria / ablation.criteria and each criterion's settings, before any compute."""
    r = cfg.reduce
    names = criterion_names(r.criteria, "reduce.criteria")
    recorded = [Statistic(s).value for s in cfg.capture.statistics]
    for name in names:
        for stat in CRITERION_STATISTICS[name]:
            if stat not in recorded:
                raise ConfigError(f"reduce.criteria includes {name}, which reads the statistic {stat}; add it: "
                                  f"capture.statistics=[{','.join(recorded + [stat])}] (a new store path)")
    for name in criterion_names(cfg.ablation.criteria, "ablation.criteria"):
        if name not in names:
            raise ConfigError(f"ablation.criteria includes {name}, which reduce.criteria {names} does not compute; "
                              f"add it to reduce.criteria")
    if "lape" in names:
        for key in ("top_rate", "filter_rate", "activation_bar_ratio"):
            _rate(getattr(r.lape, key), f"reduce.lape.{key}", lo_open=key != "top_rate")
    if "lna" in names:
        _rate(r.lna.top_rate, "reduce.lna.top_rate", lo_open=False)
        _rate(r.lna.activation_bar_ratio, "reduce.lna.activation_bar_ratio")
        if r.lna.lam is None and not (r.lna.lam_lo < r.lna.lam_hi and r.lna.lam_eps > 0 and r.lna.max_iter >= 0):
            raise ConfigError(f"reduce.lna needs lam_lo < lam_hi, lam_eps > 0 and max_iter >= 0; got "
                              f"lam_lo={r.lna.lam_lo} lam_hi={r.lna.lam_hi} lam_eps={r.lna.lam_eps}")
    if "average_precision" in names and (r.average_precision.n_top < 0 or r.average_precision.n_bottom < 0
                                         or r.average_precision.n_top + r.average_precision.n_bottom == 0):
        raise ConfigError(f"reduce.average_precision.n_top={r.average_precision.n_top} and n_bottom="
                          f"{r.average_precision.n_bottom} must be >= 0 and not both 0")
    if r.alignment:
        K = len(cfg.corpus.languages)
        if r.knn_k < 1:
            raise ConfigError(f"reduce.knn_k={r.knn_k} must be >= 1")
        t = bridge_threshold(r, K)
        if not 1 <= t <= min(r.knn_k, K - 1):
            raise ConfigError(f"reduce.bridge_threshold={t} can bridge no unit with reduce.knn_k={r.knn_k} and "
                              f"{K} languages (need 1 <= t <= min(knn_k, K-1) = {min(r.knn_k, K - 1)}); lower it")


def bridge_threshold(r: ReduceConfig, n_languages: int) -> int:
    """ILO's t: reduce.bridge_threshold, or min(3, K − 1) when it is None (3 is the script's default)."""
    return int(r.bridge_threshold) if r.bridge_threshold is not None else min(3, n_languages - 1)


def validate(cfg: RunConfig) -> RunConfig:
    """Every cross-field rule checkable from the config alone; raises ConfigError naming the key."""
    K = len(cfg.corpus.languages)
    if K < 3:
        raise ConfigError(f"corpus.languages has {K} language(s) {list(cfg.corpus.languages)}; "
                          "LRDS, SADS and key neurons need at least 3")
    if len(set(cfg.corpus.languages)) != K:
        raise ConfigError(f"corpus.languages has duplicates: {list(cfg.corpus.languages)}")
    check_capture(cfg.capture)
    if Statistic(cfg.reduce.statistic) not in [Statistic(s) for s in cfg.capture.statistics]:
        raise ConfigError(f"reduce.statistic={Statistic(cfg.reduce.statistic).value} is not recorded; "
                          f"add it to capture.statistics {[Statistic(s).value for s in cfg.capture.statistics]}")
    check_key_selection(cfg.reduce, K)
    check_criteria(cfg)
    if not 0 < cfg.reduce.ci_level < 1:
        raise ConfigError(f"reduce.ci_level={cfg.reduce.ci_level} must be in (0, 1)")
    if cfg.reduce.edge_layers < 1:
        raise ConfigError(f"reduce.edge_layers={cfg.reduce.edge_layers} must be ≥ 1")
    if cfg.reduce.n_boot < 1 or cfg.reduce.n_perm < 1:
        raise ConfigError(f"reduce.n_boot={cfg.reduce.n_boot} and reduce.n_perm={cfg.reduce.n_perm} must be ≥ 1")
    if cfg.reduce.max_task_bytes <= 0 or cfg.reduce.perm_max_rows <= 0:
        raise ConfigError("reduce.max_task_bytes and reduce.perm_max_rows must be > 0")
    if cfg.store.unit_block < 1:
        raise ConfigError(f"store.unit_block={cfg.store.unit_block} must be ≥ 1")
    labels = [c.label for c in cfg.model.checkpoints]
    if not labels:
        raise ConfigError("model.checkpoints is empty; list at least one checkpoint")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"model.checkpoints has duplicate label(s) {dup}; each checkpoint needs its own label")
    if cfg.ablation.n_random < 0:
        raise ConfigError(f"ablation.n_random={cfg.ablation.n_random} must be ≥ 0")
    if cfg.ablation.max_tokens < 2:
        raise ConfigError(f"ablation.max_tokens={cfg.ablation.max_tokens} must be ≥ 2 to predict anything")
    if cfg.split.heldout_units < 0:
        raise ConfigError(f"split.heldout_units={cfg.split.heldout_units} must be ≥ 0")
    return cfg


