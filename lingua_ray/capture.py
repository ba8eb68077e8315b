"""Batched forward over the decoder body, reducing FFN activations per unit on the device.

For each unit (one text) and each decoder layer, the input of the FFN
down-projection u[layer, t, k] (METHOD.md) is reduced over the unit's own
token positions T(s) — BOS/EOS/other special tokens and padding excluded —
into per-unit statistics of shape (L, F). Units are packed several to a row
where the model allows it (``lingua_ray.batching``: nearly no padding, big
matrix products), else right-padded; both equal one unit at a time up to float
rounding. The reduction happens inside the forward pre-hook
(``lingua_ray.hooks.Reader``: one batched matmul per statistic and layer), on
the model's device, so per-token activations (B, T, F) never reach the host;
only (U, L, F) per statistic does, U the batch's units. The forward stops
after the last layer's capture point: the rest computes nothing needed. The
statistics are the ``lingua_ray.config.Statistic`` values, each one entry of
``lingua_ray.hooks.STATISTICS``:
    mean        mean over t in T(s) of u[layer, t, k]               (METHOD.md; default)
    last        u[layer, t_last, k], t_last the last own token
    pos_frac    fraction of t in T(s) with u[layer, t, k] > 0      (LAPE-style activation probability)
    act_pos_frac  fraction of t in T(s) with act_fn(gate(x))[layer, t, k] > 0
                (LAPE/LNA; hook point act_fn_output: the FFN activation-function output)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray import batching
from lingua_ray.batching import UnitPositions, batches, pad_id_of, supports_packing
from lingua_ray.config import CaptureConfig, check_capture
from lingua_ray.hooks import Reader, statistic_names
from lingua_ray.models.adapters import get_adapter

class CaptureError(ValueError):
    """A unit could not be captured (no own tokens, non-finite activations, a hook that did not run)."""


@dataclass
class Captured:
    """Per-unit statistics for a list of texts, in the order the texts were given.

    stats[name]: float32 ndarray (n_texts, L, F). n_tokens: int (n_texts,) own tokens
    per unit. n_truncated: how many texts hit max_tokens.
    """

    stats: dict[str, np.ndarray]
    n_tokens: np.ndarray
    n_truncated: int


@torch.inference_mode()
def capture_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    cfg: CaptureConfig | None = None,
    unit_labels: Sequence[str] | None = None,
    pack: bool | None = None,
    stop: bool = True,
) -> Captured:
    """Per-unit FFN statistics for ``texts``.

    Args:
        cfg: batching and statistics; checked by ``lingua_ray.config.check_capture``
            (ConfigError). Statistics may be ``Statistic``s or their string values.
        unit_labels: names used in error messages (e.g. "ckpt=final lang=fr unit=udhr:a01.p01").
        pack: several units per row (``lingua_ray.batching``); None = where the model keeps packed
            texts apart (``supports_packing``), False = right padding. Equal up to float rounding.
        stop: end each forward after the last layer's capture point (the rest is not needed).

    Returns:
        Captured with stats[name] of shape (len(texts), L, F), float32, keyed by plain
        statistic names in cfg order.
    """
    cfg = cfg or CaptureConfig()
    names = statistic_names(cfg.statistics)  # unknown name → ConfigError listing the valid ones
    check_capture(cfg)
    labels = list(unit_labels) if unit_labels is not None else [f"text #{i}" for i in range(len(texts))]
    adapter = get_adapter(model)
    body = adapter.body_module(model)
    param = next(model.parameters())
    device = param.device
    L, F = len(adapter.down_projections(model)), adapter.n_neurons(model.config)

    # Truncate by slicing, not by the tokenizer: an EOS the tokenizer appends falls off
    # with the tail instead of being kept, and the special-tokens mask stays aligned.
    enc_all = tokenizer(list(texts), add_special_tokens=True, return_special_tokens_mask=True)
    input_ids = [ids[: cfg.max_tokens] for ids in enc_all["input_ids"]]
    special_masks = [m[: cfg.max_tokens] for m in enc_all["special_tokens_mask"]]
    n_truncated = sum(len(ids) > cfg.max_tokens for ids in enc_all["input_ids"])

    out = {s: np.zeros((len(texts), L, F), dtype=np.float32) for s in names}
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    counts_all = [len(m) - sum(m) for m in special_masks]
    empty = [labels[i] for i, c in enumerate(counts_all) if c == 0]
    if empty:
        raise CaptureError(f"no own (non-special) tokens to average over for {empty}")
    pack = supports_packing(model) if pack is None else pack
    with Reader(model, names, error=CaptureError, stop=stop) as reader:
        for batch in batches(input_ids, cfg.token_budget, pad_id_of(tokenizer), special_masks, pack,
                             batching.PACK_WIDTH):
            units = UnitPositions.of_batch(batch, device)
            reader.start(units)
            reader.run(body, **batch.model_inputs(device), use_cache=False)
            stats = reader.collect(during=f"while capturing {len(batch.index)} unit(s) from {labels[batch.index[0]]}")
            for name, t in stats.items():
                _check_finite(name, t, [labels[i] for i in batch.index], param.dtype)
                out[name][batch.index] = t.cpu().numpy()
            n_tokens[batch.index] = units.counts.cpu().numpy()
    return Captured(stats=out, n_tokens=n_tokens, n_truncated=n_truncated)


def _check_finite(name: str, t: torch.Tensor, labels: list[str], dtype: torch.dtype) -> None:
    """t: (U, L, F); raise naming the first unit and layer with a non-finite value."""
    finite = torch.isfinite(t).all(dim=2)  # (B, L)
    if not bool(finite.all()):
        r, layer = torch.nonzero(~finite)[0].tolist()
        raise CaptureError(
            f"non-finite {name} activation at {labels[r]}, layer {layer} "
            f"(dtype {dtype}; fp16 overflow? use float32 or bfloat16)"
        )
