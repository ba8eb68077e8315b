"""The settings of every key-neuron criterion (lingua_ray/criteria.py), stdlib only.

lingua_ray.config types ``reduce.lape``, ``reduce.average_precision`` and ``reduce.lna`` with these
dataclasses (so Hydra/OmegaConf check them), and ``reduce.criteria`` with ``CriterionName``; the
z-score criterion takes its settings from ``reduce.tau`` / ``key_mode`` / ``top_fraction``, so its
mask is the reducer's ``key_mask``. docs/criteria.md gives each formula and default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class CriterionName(str, enum.Enum):
    """The registered criteria (lingua_ray.criteria.CRITERIA), in the order the report lists them."""

    zscore = "zscore"                        # Zeng et al. 2025 (METHOD.md), the default
    lape = "lape"                            # Tang et al., ACL 2024
    average_precision = "average_precision"  # Kojima et al., NAACL 2024
    lna = "lna"                              # Zhang et al., AAAI 2026


# What each criterion reads from the store besides the mean (validate() checks it is recorded).
CRITERION_STATISTICS = {"zscore": (), "lape": ("act_pos_frac",), "average_precision": (),
                        "lna": ("act_pos_frac",)}


@dataclass
class ZScoreSettings:
    """The paper's criterion (METHOD.md "Key neurons"), the default.

    mode: "zscore" (key when z > tau) or "top_fraction" (per language the top ``top_fraction`` of
        all L·F neurons by z, z > 0 only).
    tau: threshold on z; must be < sqrt(K-1), the largest z across K languages.
    top_fraction: in (0, 1), for mode "top_fraction".
    """

    mode: str = "zscore"
    tau: float = 2.0
    top_fraction: Optional[float] = None


@dataclass
class LapeSettings:
    """LAPE (Tang et al., ACL 2024); defaults of RUCAIBox/Language-Specific-Neurons identify.py (4eb5ea3).

    top_rate: share of all L·F (layer, neuron) pairs kept, lowest entropy first.
    filter_rate: a neuron is dropped unless some language's p exceeds this quantile of all K·L·F p.
    activation_bar_ratio: a kept neuron belongs to every language whose p exceeds this quantile.
    """

    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95


@dataclass
class AveragePrecisionSettings:
    """Average precision (Kojima et al., NAACL 2024; kojima-takeshi188/lang_neuron).

    n_top: per language, the neurons of highest AP over all L·F (their release: 1000).
    n_bottom: per language, the neurons of lowest AP (their release adds 1000; off here by default).
    """

    n_top: int = 1000
    n_bottom: int = 0


@dataclass
class LnaSettings:
    """LNA (Zhang et al., AAAI 2026; NJUNLP/Language-Neurons-Alignment).

    top_rate: share of all L·F pairs kept, lowest score first (their README and masks: 0.01).
    activation_bar_ratio: a kept neuron belongs to every language whose p exceeds this quantile.
    lam: λ of the score; None searches it as their autosweep does, in [lam_lo, lam_hi] until the
        bracket is narrower than lam_eps (or max_iter halvings).
    """

    top_rate: float = 0.01
    activation_bar_ratio: float = 0.95
    lam: Optional[float] = None
    lam_lo: float = 0.0
    lam_hi: float = 0.2
    lam_eps: float = 1e-3
    max_iter: int = 64


__all__ = ["AveragePrecisionSettings", "CRITERION_STATISTICS", "CriterionName", "LapeSettings", "LnaSettings",
           "ZScoreSettings"]
