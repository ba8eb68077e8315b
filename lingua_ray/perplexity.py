"""Summed next-token negative log-likelihood of texts, and corpus-level perplexity.

``unit_nll`` scores each text's own next-token predictions in right-padded, length-bucketed
batches (``lingua_ray.batching``); the result equals one text at a time. ``perplexity`` is
token-weighted: exp(Σ nll / Σ predicted tokens). Used under a mask by
``lingua_ray.ablation.evaluate_mask``; knows nothing of masks.

The LM head runs only where a token is predicted. The decoder body (``Adapter.body_module``,
whose output every supported ``*ForCausalLM`` has already passed through its final norm)
gives hidden states (B, T, H); the N = Σ (m − 1) of them that predict a text's own next
token are gathered into (N, H) and the LM head (``get_output_embeddings()``, plus Gemma's
``final_logit_softcapping`` where the config sets it) is applied in row chunks of at most
``LOGIT_CHUNK`` logits. No (B, T, V) tensor exists: with Gemma-3's 262,144-token vocabulary
the head costs more FLOPs per token than the whole body, and the old full-batch head spent
them on padding too. The log-softmax is taken in float32 whatever the model's dtype and summed
in float64. The first call on a model object checks the head-only logits against the model's
own ``forward`` on a short prefix (``check_head``), so an architecture that post-processes its
logits some other way fails loudly instead of scoring something else.

Pure torch + numpy: no Ray, no Zarr.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray import batching
from lingua_ray.batching import Batch, batches, pad_id_of, supports_packing
from lingua_ray.models.adapters import get_adapter
from lingua_ray.specificity import AblationError

# Head chunks: at most ROW_CHUNK predicted positions at a time, and for each a vocabulary slice
# of LOGIT_CHUNK // rows logits (2^22 float32 = 16 MiB). Measured on Gemma-3-270M's head
# (bench/bench_ablation.py, docs/benchmarks.md): (64 rows x full vocabulary) chunks stream the
# 671 MB weight once per 64 rows and ran at half the matmul rate; all rows x 4,096-wide
# vocabulary slices keep each weight slice in cache across the rows and run near it.
ROW_CHUNK = 1024
LOGIT_CHUNK = 1 << 22

# Models whose head-only logits were checked against their own forward (once per model object).
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@dataclass(frozen=True)
class Head:
    """The two halves of a ``*ForCausalLM``: decoder body and LM head.

    body: ``body(input_ids=, attention_mask=, use_cache=False).last_hidden_state`` is (B, T, H),
        already final-normed. lm_head: (N, H) → (N, V) in the model's dtype.
    softcap: Gemma-2/3 ``final_logit_softcapping`` (logits = cap · tanh(logits / cap)), or None.
    """

    body: nn.Module
    lm_head: nn.Module
    softcap: float | None

    @classmethod
    def of(cls, model: nn.Module) -> "Head":
        body = get_adapter(model).body_module(model)
        lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if body is model or lm_head is None:
            raise AblationError(f"{type(model).__name__} has no LM head to score with: pass the *ForCausalLM, "
                                "not its decoder body")
        cap = getattr(model.config, "final_logit_softcapping", None)
        return cls(body, lm_head, float(cap) if cap else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) → logits (..., V) in the model's dtype, exactly as the model's forward computes them."""
        logits = self.lm_head(hidden)
        if self.softcap is not None:  # same three ops, same dtype, as Gemma2/3ForCausalLM.forward
            logits = logits / self.softcap
            logits = torch.tanh(logits)
            logits = logits * self.softcap
        return logits


@torch.no_grad()
def check_head(model: nn.Module, head: Head, input_ids: torch.Tensor, n: int = 8) -> None:
    """Compare ``head`` with the model's own forward on the first ``n`` tokens of ``input_ids[0]``.

    Raises AblationError naming the model type when the max |difference| exceeds 1e-3 of the
    max |logit| (float rounding of the same ops is ~1e-7; a missed scale or cap is ≥ 1e-2).
    """
    ids = input_ids[:1, :n]
    ref = model(input_ids=ids, use_cache=False).logits[0].float()
    got = head.logits(head.body(input_ids=ids, use_cache=False).last_hidden_state[0]).float()
    err = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if not err <= 1e-3 * max(scale, 1e-6):
        raise AblationError(
            f"model_type {getattr(model.config, 'model_type', '?')!r}: head-only logits differ from the model's "
            f"forward by {err:.3g} (max |logit| {scale:.3g}); its forward post-processes logits in a way "
            "lingua_ray/perplexity.py Head.logits does not know: add it there")


@torch.no_grad()
def unit_nll(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    token_budget: int = 4096,
    max_tokens: int = 512,
    device: torch.device | str | None = None,
    pack: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token negative log-likelihood per text.

    Each text is tokenised on its own terms (``add_special_tokens=True``, truncated to
    ``max_tokens`` tokens). Every token after the first is predicted from the tokens
    before it: with a BOS-adding tokenizer that scores every word token, without one
    (GPT-2, BLOOM) the first word token is context only; an EOS the tokenizer appends
    is scored like any token. Padding is never scored. Texts are packed several to a row
    (``lingua_ray.batching``) or right-padded with an attention mask; either way the result
    equals one text at a time up to float rounding.

    Args:
        model: a ``*ForCausalLM`` in eval mode.
        texts: n strings.
        token_budget: max batch size × padded length per forward.
        max_tokens: truncation length in tokens (special tokens included).
        device: where the inputs go; default the model's first parameter's device.
        pack: None = pack where the model keeps packed texts apart (``supports_packing``); False = pad.

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
    head = Head.of(model)
    # The tokenizer truncates (unlike capture's slicing): an EOS it appends is kept and scored.
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)
    pack = supports_packing(model) if pack is None else pack
    for batch in batches(enc["input_ids"], token_budget, pad_id_of(tokenizer), pack=pack,
                         width=batching.PACK_WIDTH):
        if max(batch.lengths) < 2:
            continue  # every text here is this short: nothing to predict
        if model not in _CHECKED:
            check_head(model, head, batch.input_ids.to(device))
            _CHECKED[model] = True
        sums, counts = _batch_nll(head, batch, device)
        nll_sum[batch.index], n_pred[batch.index] = sums, counts
    return nll_sum, n_pred


def _batch_nll(head: Head, batch: Batch, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(Σ nll in nats float64 (U,), predicted positions int64 (U,)) per text of one batch, packed or padded.

    Position t of a row predicts token t + 1 when both belong to the same text (``Batch.segment``):
    those N hidden states, row-major, are the only ones the head sees.
    """
    segment = batch.segment.to(device)
    input_ids = batch.input_ids.to(device)
    hidden = head.body(**batch.model_inputs(device), use_cache=False).last_hidden_state  # (B, T, H)
    predicted = (segment[:, :-1] >= 0) & (segment[:, :-1] == segment[:, 1:])  # (B, T-1)
    h = hidden[:, :-1][predicted]  # (N, H)
    targets = input_ids[:, 1:][predicted]  # (N,)
    units = segment[:, :-1][predicted]  # (N,) text u of each prediction
    del hidden
    n_units = len(batch.index)
    counts = torch.bincount(units, minlength=n_units).cpu().numpy().astype(np.int64)
    if len(targets) == 0:
        return np.zeros(n_units), counts
    nll = torch.cat([_nll_rows(head, h[s : s + ROW_CHUNK], targets[s : s + ROW_CHUNK])
                     for s in range(0, len(targets), ROW_CHUNK)])
    sums = torch.zeros(n_units, dtype=torch.float64, device=device).index_add_(0, units, nll)
    return sums.cpu().numpy(), counts


def _nll_rows(head: Head, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(logits(h))[target] per row, float64 (R,), the vocabulary taken in slices.

    h: (R, H) hidden states; targets: (R,) long. Equals ``cross_entropy(head.logits(h).float(),
    targets)`` within float32 rounding (a running log-sum-exp over the slices, merged in float64),
    without ever holding (R, V). A head without a ``weight`` (V, H) is applied whole instead.
    """
    weight = getattr(head.lm_head, "weight", None)
    bias = getattr(head.lm_head, "bias", None)
    if not isinstance(head.lm_head, nn.Linear) or weight is None:
        return torch.nn.functional.cross_entropy(head.logits(h).float(), targets, reduction="none").double()
    rows, vocab = len(h), weight.shape[0]
    width = max(64, LOGIT_CHUNK // max(rows, 1))
    run_max = torch.full((rows,), float("-inf"), dtype=torch.float64, device=h.device)
    run_sum = torch.zeros(rows, dtype=torch.float64, device=h.device)
    target_logit = torch.zeros(rows, dtype=torch.float32, device=h.device)
    for v0 in range(0, vocab, width):
        v1 = min(v0 + width, vocab)
        logits = torch.nn.functional.linear(h, weight[v0:v1], None if bias is None else bias[v0:v1])
        if head.softcap is not None:  # the three ops of Head.logits, on the slice
            logits = torch.tanh(logits / head.softcap) * head.softcap
        logits = logits.float()
        inside = (targets >= v0) & (targets < v1)
        if bool(inside.any()):
            r = torch.nonzero(inside).flatten()
            target_logit[r] = logits[r, targets[r] - v0]
        new_max = torch.maximum(run_max, logits.amax(1).double())
        # exp in place on the slice: it is not needed after this line
        slice_sum = logits.sub_(new_max.float()[:, None]).exp_().sum(1, dtype=torch.float64)
        run_sum = run_sum * torch.exp(run_max - new_max) + slice_sum
        run_max = new_max
    return run_max + torch.log(run_sum) - target_logit.double()


def perplexity(nll_sum, n_pred) -> float:
    """Corpus-level, token-weighted perplexity: exp(Σ nll / Σ n_pred)."""
    total = int(np.sum(n_pred))
    if total <= 0:
        raise AblationError("no predicted tokens: every text has fewer than 2 tokens")
    return float(np.exp(float(np.sum(nll_sum, dtype=np.float64)) / total))
