"""Summed next-token negative log-likelihood of texts, and corpus-level perplexity.

``unit_nll`` scores each text's own next-token predictions in right-padded, length-bucketed
batches (``lingua_ray.batching``); the result equals one text at a time. ``perplexity`` is
token-weighted: exp(Σ nll / Σ predicted tokens). The log-softmax is taken in float32
whatever the model's dtype and summed in float64. Used under a mask by
``lingua_ray.ablation.evaluate_mask``; knows nothing of masks.

Pure torch + numpy: no Ray, no Zarr.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray.batching import Batch, batches, pad_id_of
from lingua_ray.specificity import AblationError


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def unit_nll(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    token_budget: int = 4096,
    max_tokens: int = 512,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token negative log-likelihood per text.

    Each text is tokenised on its own terms (``add_special_tokens=True``, truncated to
    ``max_tokens`` tokens). Every token after the first is predicted from the tokens
    before it: with a BOS-adding tokenizer that scores every word token, without one
    (GPT-2, BLOOM) the first word token is context only; an EOS the tokenizer appends
    is scored like any token. Padding is never scored. Batches are right-padded with an
    attention mask, so the result equals one text at a time.

    Args:
        texts: n strings.
        token_budget: max batch size × padded length per forward.
        max_tokens: truncation length in tokens (special tokens included).
        device: where the inputs go; default the model's first parameter's device.

    Returns:
        nll_sum: float64 (n,), nats, summed over the text's predicted positions.
        n_pred: int64 (n,), predicted positions per text (0 for a text of < 2 tokens).
    """
    if model.training:
        raise AblationError("model is in training mode (dropout would make perplexity random): call model.eval()")
    if max_tokens < 2:
        raise AblationError(f"max_tokens must be ≥ 2 to predict anything, got {max_tokens}")
    n = len(texts)
    nll_sum = np.zeros(n, dtype=np.float64)
    n_pred = np.zeros(n, dtype=np.int64)
    if n == 0:
        return nll_sum, n_pred
    device = torch.device(device) if device is not None else _model_device(model)
    # The tokenizer truncates (unlike capture's slicing): an EOS it appends is kept and scored.
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)
    for batch in batches(enc["input_ids"], token_budget, pad_id_of(tokenizer)):
        if batch.width < 2:
            continue  # every text left is this short: nothing to predict
        for i, (nll, count) in zip(batch.index, _batch_nll(model, batch, device), strict=True):
            nll_sum[i], n_pred[i] = nll, count
    return nll_sum, n_pred


def _batch_nll(model: nn.Module, batch: Batch, device: torch.device) -> list[tuple[float, int]]:
    """(Σ nll in nats, predicted positions) per row of one right-padded batch.

    The seam for scoring: today the full LM head runs over all B × T positions and
    each row's first m − 1 logits are scored; computing the head only at the predicted
    positions replaces this function alone.
    """
    input_ids = batch.input_ids.to(device)
    attention = batch.attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
    out = []
    for r, m in enumerate(batch.lengths):
        if m < 2:
            out.append((0.0, 0))
            continue
        # Row by row keeps the float32 copy at (T, V), not (B, T, V): large vocabularies.
        logp = torch.log_softmax(logits[r, : m - 1].float(), dim=-1)
        nll = -logp.gather(-1, input_ids[r, 1:m, None]).squeeze(-1)
        out.append((nll.double().sum().item(), m - 1))
    return out


def perplexity(nll_sum, n_pred) -> float:
    """Corpus-level, token-weighted perplexity: exp(Σ nll / Σ n_pred)."""
    total = int(np.sum(n_pred))
    if total <= 0:
        raise AblationError("no predicted tokens: every text has fewer than 2 tokens")
    return float(np.exp(float(np.sum(nll_sum, dtype=np.float64)) / total))
