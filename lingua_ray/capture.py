"""Batched forward over the decoder body, reducing FFN activations per unit on the device.

For each unit (one text) and each decoder layer, the input of the FFN
down-projection u[layer, t, k] (METHOD.md) is reduced over the unit's own
token positions T(s) — BOS/EOS/other special tokens and padding excluded —
into per-unit statistics of shape (L, F). The reduction happens inside the
forward pre-hook, on the model's device, so per-token activations (B, T, F)
never reach the host; only (B, L, F) per statistic does.

Statistics (``STATISTICS``):
    mean        mean over t in T(s) of u[layer, t, k]               (METHOD.md; default)
    last        u[layer, t_last, k], t_last the last own token
    pos_frac    fraction of t in T(s) with u[layer, t, k] > 0      (LAPE-style activation probability)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray.models.adapters import get_adapter

STATISTICS = ("mean", "last", "pos_frac")


class CaptureError(ValueError):
    """A unit could not be captured (no own tokens, non-finite activations, bad config)."""


@dataclass
class CaptureConfig:
    """How units are batched and reduced.

    token_budget: max padded tokens per batch (batch size × longest length).
    max_tokens: units longer than this (after special tokens) are truncated; counted in the result.
    statistics: which per-unit statistics to record (subset of STATISTICS).
    """

    token_budget: int = 8192
    max_tokens: int = 512
    statistics: list[str] = field(default_factory=lambda: ["mean"])

    def __post_init__(self) -> None:
        bad = [s for s in self.statistics if s not in STATISTICS]
        if bad or not self.statistics:
            raise CaptureError(f"unknown statistics {bad or '[]'}; choose from {list(STATISTICS)}")
        if self.token_budget < self.max_tokens:
            raise CaptureError(f"token_budget ({self.token_budget}) must be ≥ max_tokens ({self.max_tokens})")


@dataclass
class Captured:
    """Per-unit statistics for a list of texts, in the order the texts were given.

    stats[name]: float32 ndarray (n_texts, L, F). n_tokens: int (n_texts,) own tokens
    per unit. n_truncated: how many texts hit max_tokens.
    """

    stats: dict[str, np.ndarray]
    n_tokens: np.ndarray
    n_truncated: int


def plan_batches(lengths: Sequence[int], token_budget: int, max_pad_ratio: float = 1.5) -> list[list[int]]:
    """Index batches, longest first, with batch_size × longest ≤ token_budget.

    A batch also closes when the next (shorter) text would be padded to more than
    ``max_pad_ratio`` × its own length: one long paragraph must not pad fifteen short
    ones to its length (on real UDHR blocks that wasted 7× the compute). Longest first
    so an out-of-memory batch shows at once. A text longer than the budget is alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            head = lengths[batches[-1][0]]  # the batch's padded length
            fits = (len(batches[-1]) + 1) * head <= token_budget
            if fits and head <= max_pad_ratio * max(lengths[i], 8):
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


class _Reducer:
    """Forward pre-hooks that reduce u (B, T, F) to per-unit stats on the device."""

    def __init__(self, modules: list[nn.Module], statistics: Sequence[str]):
        self.modules = modules
        self.statistics = tuple(statistics)
        self.own: torch.Tensor | None = None  # (B, T) float, 1 on own tokens
        self.last_idx: torch.Tensor | None = None  # (B,) long
        self.out: dict[str, list[torch.Tensor | None]] = {}
        self.handles: list = []

    def __enter__(self) -> "_Reducer":
        for layer, module in enumerate(self.modules):
            self.handles.append(module.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def start(self, own: torch.Tensor) -> None:
        self.own = own
        counts = own.sum(1)
        positions = torch.arange(own.shape[1], device=own.device).expand_as(own)
        self.last_idx = torch.where(own > 0, positions, -1).amax(1)
        self.counts = counts
        self.out = {s: [None] * len(self.modules) for s in self.statistics}

    def _hook(self, layer: int):
        def hook(module, args):
            u = args[0]
            own = self.own
            # Accumulate in float32 so a bf16 model's sums don't lose precision.
            if "mean" in self.statistics:
                s = torch.einsum("btf,bt->bf", u.float(), own.float())
                self.out["mean"][layer] = s / self.counts[:, None]
            if "last" in self.statistics:
                idx = self.last_idx.view(-1, 1, 1).expand(-1, 1, u.shape[-1])
                self.out["last"][layer] = torch.gather(u, 1, idx)[:, 0].float()
            if "pos_frac" in self.statistics:
                pos = (u > 0).float()
                self.out["pos_frac"][layer] = torch.einsum("btf,bt->bf", pos, own.float()) / self.counts[:, None]
            return None

        return hook

    def collect(self) -> dict[str, torch.Tensor]:
        missing = [i for i, t in enumerate(self.out[self.statistics[0]]) if t is None]
        if missing:
            raise CaptureError(f"down-projection hooks did not fire for layers {missing}")
        return {s: torch.stack(v, 1) for s, v in self.out.items()}  # (B, L, F)


@torch.inference_mode()
def capture_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    cfg: CaptureConfig | None = None,
    unit_labels: Sequence[str] | None = None,
) -> Captured:
    """Per-unit FFN statistics for ``texts``.

    Args:
        unit_labels: names used in error messages (e.g. "ckpt=final lang=fr unit=udhr:a01.p01").

    Returns:
        Captured with stats[name] of shape (len(texts), L, F), float32.
    """
    cfg = cfg or CaptureConfig()
    labels = list(unit_labels) if unit_labels is not None else [f"text #{i}" for i in range(len(texts))]
    adapter = get_adapter(model)
    modules = adapter.down_projections(model)
    body = adapter.body_module(model)
    device = next(model.parameters()).device
    L, F = len(modules), adapter.n_neurons(model.config)

    enc_all = tokenizer(list(texts), add_special_tokens=True, return_special_tokens_mask=True)
    input_ids = [ids[: cfg.max_tokens] for ids in enc_all["input_ids"]]
    special_masks = [m[: cfg.max_tokens] for m in enc_all["special_tokens_mask"]]
    n_truncated = sum(len(ids) > cfg.max_tokens for ids in enc_all["input_ids"])
    lengths = [len(ids) for ids in input_ids]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    out = {s: np.zeros((len(texts), L, F), dtype=np.float32) for s in cfg.statistics}
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    with _Reducer(modules, cfg.statistics) as red:
        for batch in plan_batches(lengths, cfg.token_budget):
            T = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), T), dtype=torch.long)
            special = torch.zeros((len(batch), T), dtype=torch.long)
            for r, i in enumerate(batch):  # right padding
                n = lengths[i]
                ids[r, :n] = torch.tensor(input_ids[i])
                attn[r, :n] = 1
                special[r, :n] = torch.tensor(special_masks[i])
            own = attn * (1 - special)
            counts = own.sum(1)
            if (counts == 0).any():
                bad = [labels[batch[r]] for r in torch.nonzero(counts == 0).flatten().tolist()]
                raise CaptureError(f"no own (non-special) tokens to average over for {bad}")
            red.start(own.to(device))
            body(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
            stats = red.collect()
            for name, t in stats.items():
                finite = torch.isfinite(t).all(dim=2)  # (B, L)
                if not bool(finite.all()):
                    r, layer = torch.nonzero(~finite)[0].tolist()
                    raise CaptureError(
                        f"non-finite {name} activation at {labels[batch[r]]}, layer {layer} "
                        f"(dtype {next(model.parameters()).dtype}; fp16 overflow? use float32 or bfloat16)"
                    )
                out[name][batch] = t.cpu().numpy()
            n_tokens[batch] = counts.numpy()
    return Captured(stats=out, n_tokens=n_tokens, n_truncated=n_truncated)
