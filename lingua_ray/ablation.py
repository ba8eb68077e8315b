"""Deactivating FFN neurons and measuring held-out perplexity (METHOD.md, "Deactivation").

A mask is a bool array (L, F): layer × neuron, True = deactivate. The neurons are
zeroed at the capture point, the input u[layer] of each layer's FFN
down-projection, by a forward pre-hook that writes zeros in the input's own dtype.
Perplexity is corpus-level and token-weighted: exp(Σ nll / Σ predicted tokens),
with the log-softmax taken in float32 whatever the model's dtype.

The evaluation unit is one mask × one evaluation language: ``evaluate_mask`` with a
one-language ``eval_texts``. ``plan_masks`` lists the masks of one checkpoint (the
intact model, each language's key set, R matched random controls per language),
``rows_from_ppl`` turns the per-unit perplexities into result rows, and
``summarise_ablation`` reduces rows to per-language specificity. ``ablation_matrix``
composes the three in-process; a scheduler can run the units anywhere and reuse the
other two unchanged.

Pure torch + numpy: no Ray, no Zarr.
"""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray.capture import plan_batches
from lingua_ray.models.adapters import get_adapter


class AblationError(ValueError):
    """Bad ablation input (mask shape or dtype, languages, texts) or an ablation that did not apply."""


# --------------------------------------------------------------------------- masks as hooks


def _model_type(model: nn.Module) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def expected_mask_shape(model: nn.Module) -> tuple[int, int]:
    """(L, F) for this model: decoder layers × FFN neurons per layer."""
    adapter = get_adapter(model)
    return adapter.n_layers(model.config), adapter.n_neurons(model.config)


def _as_bool_array(mask, what: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        # A score or z array passed by mistake would otherwise be silently thresholded.
        raise AblationError(f"{what} must be a bool array (True = deactivate), got dtype {mask.dtype}")
    return mask


def check_mask(model: nn.Module, mask) -> np.ndarray:
    """Validate ``mask`` against ``model`` and return it as a bool ndarray (L, F)."""
    mask = _as_bool_array(mask, "mask")
    expected = expected_mask_shape(model)
    if mask.shape != expected:
        raise AblationError(
            f"mask shape {mask.shape} does not fit model_type {_model_type(model)!r}: expected (L, F) = {expected} "
            "(a mask from another model or checkpoint family?)"
        )
    return mask


class _ZeroNeurons:
    """Forward pre-hook: zero the listed neurons (last axis) of the down-projection input."""

    def __init__(self, index: torch.Tensor):
        self.index = index
        self.calls = 0
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        idx = self._per_device.get(x.device)
        if idx is None:
            idx = self._per_device[x.device] = self.index.to(x.device)
        self.calls += 1
        # index_fill writes exact zeros in x's dtype; a multiply by a keep-vector would turn inf into nan.
        return (x.index_fill(-1, idx, 0),) + tuple(args[1:])


@dataclass
class Deactivation:
    """What ``deactivate`` yields: the hooked layers and how often each hook ran."""

    layers: list[int]
    _hooks: list[_ZeroNeurons]

    @property
    def calls(self) -> dict[int, int]:
        """layer → number of forward calls that went through its hook so far."""
        return {layer: hook.calls for layer, hook in zip(self.layers, self._hooks)}

    def silent_layers(self) -> list[int]:
        """Hooked layers whose hook never ran: their ablation did not happen."""
        return [layer for layer, n in self.calls.items() if n == 0]


@contextmanager
def deactivate(model: nn.Module, mask) -> Iterator[Deactivation]:
    """Zero the masked FFN neurons of ``model`` while the context is open.

    Args:
        model: a ``*ForCausalLM`` (or decoder body) with an adapter.
        mask: bool (L, F), ndarray or tensor; True = deactivate neuron (layer, k).

    One forward pre-hook per down-projection with at least one masked neuron; layers
    with none are untouched, so an all-False mask leaves the forward bit-identical.
    The hooks are removed by their handles on exit, exceptions included; hooks that
    others registered on the same modules are left alone.
    """
    mask = check_mask(model, mask)
    downs = get_adapter(model).down_projections(model)
    if len(downs) != mask.shape[0]:
        raise AblationError(
            f"model_type {_model_type(model)!r} has {len(downs)} down-projections but its config says "
            f"{mask.shape[0]} layers"
        )
    handles, layers, hooks = [], [], []
    try:
        for layer, row in enumerate(mask):
            if row.any():
                hook = _ZeroNeurons(torch.from_numpy(np.flatnonzero(row)))
                handles.append(downs[layer].register_forward_pre_hook(hook))
                layers.append(layer)
                hooks.append(hook)
        yield Deactivation(layers, hooks)
    finally:
        for handle in handles:
            handle.remove()


def down_projection_hook_count(model: nn.Module) -> int:
    """Forward pre-hooks currently on the model's down-projections (any owner)."""
    return sum(len(m._forward_pre_hooks) for m in get_adapter(model).down_projections(model))


# --------------------------------------------------------------------------- matched random control


def language_seed(seed: int, language: str) -> tuple[int, int]:
    """Seed entropy for one language's random controls.

    Derived from the language *name* (CRC-32), not its position, so a control mask is
    the same whichever languages are run alongside it or in which order — a resumed or
    re-planned run redraws the very same masks.
    """
    return (int(seed), zlib.crc32(language.encode("utf-8")))


def matched_random_masks(
    mask, n_random: int, seed: int | Sequence[int], exclude_mask: bool = False
) -> np.ndarray:
    """Random masks with exactly ``mask``'s neuron count in every layer.

    Args:
        mask: bool (L, F), the key set to match.
        n_random: R, number of repeats.
        seed: int or sequence of ints; repeat r uses ``numpy.random.default_rng((*seed, r))``,
            so each repeat is reproducible on its own.
        exclude_mask: draw only among neurons outside ``mask``. Default False, which is
            METHOD.md's control: uniform within the layer, i.e. the null "an arbitrary set
            of this per-layer size", which may overlap the key set as any arbitrary set
            would. True gives a disjoint control (key set vs. non-key neurons of equal
            size); it errors when a layer's key set is more than half the layer.

    Returns:
        bool (R, L, F).
    """
    mask = _as_bool_array(mask, "mask")
    if mask.ndim != 2:
        raise AblationError(f"mask must be 2-D (L, F), got shape {mask.shape}")
    if n_random < 0:
        raise AblationError(f"n_random must be ≥ 0, got {n_random}")
    entropy = (int(seed),) if isinstance(seed, (int, np.integer)) else tuple(int(s) for s in seed)
    n_layers, width = mask.shape
    counts = mask.sum(axis=1)
    if exclude_mask:
        short = [(layer, int(c)) for layer, c in enumerate(counts) if c > width - c]
        if short:
            layer, c = short[0]
            raise AblationError(
                f"exclude_mask: layer {layer} has {c} key neurons of {width}, too few others to draw {c} from "
                f"({len(short)} such layer(s))"
            )
    out = np.zeros((n_random, n_layers, width), dtype=bool)
    for r in range(n_random):
        rng = np.random.default_rng((*entropy, r))
        for layer in range(n_layers):
            if counts[layer] == 0:
                continue
            pool = np.flatnonzero(~mask[layer]) if exclude_mask else np.arange(width)
            out[r, layer, rng.choice(pool, size=int(counts[layer]), replace=False)] = True
    return out


# --------------------------------------------------------------------------- perplexity


def _pad_id(tokenizer) -> int:
    # Padding positions are masked out and never scored, so any valid id will do; this
    # avoids setting tokenizer.pad_token and so never mutates the caller's tokenizer.
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0


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
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)
    ids: list[list[int]] = enc["input_ids"]
    pad = _pad_id(tokenizer)
    for batch in plan_batches([len(x) for x in ids], token_budget):
        width = len(ids[batch[0]])
        if width < 2:
            continue  # every text left is this short: nothing to predict
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            attention[r, : len(ids[i])] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        for r, i in enumerate(batch):
            m = len(ids[i])
            if m < 2:
                continue
            # Row by row keeps the float32 copy at (T, V), not (B, T, V): large vocabularies.
            logp = torch.log_softmax(logits[r, : m - 1].float(), dim=-1)
            nll = -logp.gather(-1, input_ids[r, 1:m, None]).squeeze(-1)
            nll_sum[i] = nll.double().sum().item()
            n_pred[i] = m - 1
    return nll_sum, n_pred


def perplexity(nll_sum, n_pred) -> float:
    """Corpus-level, token-weighted perplexity: exp(Σ nll / Σ n_pred)."""
    total = int(np.sum(n_pred))
    if total <= 0:
        raise AblationError("no predicted tokens: every text has fewer than 2 tokens")
    return float(np.exp(float(np.sum(nll_sum, dtype=np.float64)) / total))


def evaluate_mask(
    model: nn.Module,
    tokenizer,
    mask,
    eval_texts: Mapping[str, Sequence[str]],
    token_budget: int = 4096,
    max_tokens: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Perplexity per evaluation language with ``mask`` deactivated (None = intact model).

    One evaluation unit is one mask × one language: pass a one-entry ``eval_texts``.
    Raises if a hooked layer's hook never ran, i.e. the ablation silently did nothing.

    Returns:
        {language: ppl}.
    """
    for lang, texts in eval_texts.items():
        if len(texts) == 0:
            raise AblationError(f"no evaluation texts for language {lang!r}")
    if mask is None:
        return {
            lang: perplexity(*unit_nll(model, tokenizer, texts, token_budget, max_tokens, device))
            for lang, texts in eval_texts.items()
        }
    out: dict[str, float] = {}
    with deactivate(model, mask) as state:
        for lang, texts in eval_texts.items():
            out[lang] = perplexity(*unit_nll(model, tokenizer, texts, token_budget, max_tokens, device))
            silent = state.silent_layers()
            if silent:
                raise AblationError(
                    f"deactivation hooks on layers {silent} never ran while evaluating {lang!r} "
                    f"(model_type {_model_type(model)!r}): the forward bypasses the down-projection"
                )
    return out


# --------------------------------------------------------------------------- one checkpoint's matrix


@dataclass
class MaskSpec:
    """One row of the ablation matrix before evaluation.

    Attributes:
        kind: "none", "key" or "random".
        language: the key language (None for "none").
        repeat: random repeat index (None unless kind == "random").
        mask: bool (L, F), or None for the intact model.
    """

    kind: str
    language: str | None
    repeat: int | None
    mask: np.ndarray | None

    @property
    def name(self) -> str:
        """The row's "mask" field: "none", "key:<lang>" or "random:<lang>"."""
        return "none" if self.kind == "none" else f"{self.kind}:{self.language}"

    @property
    def id(self) -> str:
        """Unique within a plan: the name, plus ":<repeat>" for random rows."""
        return self.name if self.repeat is None else f"{self.name}:{self.repeat}"

    @property
    def n_neurons(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())

    @property
    def needs_eval(self) -> bool:
        """False for a non-"none" empty mask: its perplexity is the intact one, exactly."""
        return self.kind == "none" or self.n_neurons > 0


def plan_masks(
    key_masks, languages: Sequence[str], n_random: int = 3, seed: int = 0, exclude_mask: bool = False
) -> list[MaskSpec]:
    """The masks of one checkpoint, in row order.

    Args:
        key_masks: bool (K, L, F), key neurons per language.
        languages: K language names, in key_masks order.

    Returns:
        "none", then per language "key:<lang>" and R "random:<lang>" specs (repeat 0..R-1),
        the controls matched layer by layer to that language's key set and seeded by
        ``language_seed(seed, lang)``.
    """
    key_masks = _as_bool_array(key_masks, "key_masks")
    languages = list(languages)
    if key_masks.ndim != 3 or key_masks.shape[0] != len(languages):
        raise AblationError(
            f"key_masks must be (K, L, F) with K = {len(languages)} languages {languages}, got shape {key_masks.shape}"
        )
    if len(set(languages)) != len(languages):
        raise AblationError(f"duplicate languages in {languages}")
    plan = [MaskSpec("none", None, None, None)]
    for k, lang in enumerate(languages):
        plan.append(MaskSpec("key", lang, None, key_masks[k]))
        controls = matched_random_masks(key_masks[k], n_random, language_seed(seed, lang), exclude_mask)
        plan.extend(MaskSpec("random", lang, r, controls[r]) for r in range(n_random))
    return plan


def rows_from_ppl(
    plan: Sequence[MaskSpec], ppl: Mapping[str, Mapping[str, float]], eval_languages: Sequence[str]
) -> list[dict]:
    """Result rows from per-spec perplexities.

    Args:
        plan: from ``plan_masks``; its first spec is "none".
        ppl: spec.id → {eval_lang: ppl}; specs with ``needs_eval`` False may be absent
            (they take the intact perplexities, so their log ratios are exactly 0).

    Returns:
        rows with "mask", "language", "repeat", "n_neurons", "ppl" and
        "log_ppl_ratio" = log(ppl / ppl_intact) per eval language.
    """
    if not plan or plan[0].kind != "none":
        raise AblationError("plan must start with the intact model ('none')")
    intact = _ppl_of(ppl, "none", eval_languages)
    rows = []
    for spec in plan:
        values = _ppl_of(ppl, spec.id, eval_languages) if spec.needs_eval else intact
        rows.append(
            {
                "mask": spec.name,
                "language": spec.language,
                "repeat": spec.repeat,
                "n_neurons": spec.n_neurons,
                "ppl": {e: float(values[e]) for e in eval_languages},
                "log_ppl_ratio": {e: math.log(values[e]) - math.log(intact[e]) for e in eval_languages},
            }
        )
    return rows


def _ppl_of(ppl: Mapping[str, Mapping[str, float]], spec_id: str, eval_languages: Sequence[str]) -> Mapping:
    if spec_id not in ppl:
        raise AblationError(f"no perplexities for mask {spec_id!r}")
    missing = [e for e in eval_languages if e not in ppl[spec_id]]
    if missing:
        raise AblationError(f"mask {spec_id!r} has no perplexity for eval language(s) {missing}")
    return ppl[spec_id]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else math.nan)  # one draw has no spread


def summarise_ablation(rows: Sequence[Mapping], languages: Sequence[str], eval_languages: Sequence[str]) -> dict:
    """Per-language specificity from result rows (pure; no model).

    For language l, with r = log_ppl_ratio and O = eval languages other than l:
        own_log_ratio         = r_key:l[l]
        other_mean/median     = mean / median over m in O of r_key:l[m]
        specificity           = own − other_mean
        random_own_*          = mean, sd over repeats of r_random:l[l]
        random_specificity_*  = mean, sd over repeats of (r[l] − mean_O r[m])
    sd uses ddof=1 when R > 1, else NaN (one draw has no spread); with R = 0 the random statistics are NaN, and
    with no other eval language the "other" statistics and specificity are NaN.
    Log ratios, medians beside means: real effects are heavy-tailed.
    """
    eval_languages = list(eval_languages)
    out = {}
    for lang in languages:
        if lang not in eval_languages:
            raise AblationError(f"key language {lang!r} is not among the eval languages {eval_languages}")
        others = [e for e in eval_languages if e != lang]
        key_rows = [r for r in rows if r["mask"] == f"key:{lang}"]
        if len(key_rows) != 1:
            raise AblationError(f"expected one 'key:{lang}' row, found {len(key_rows)}")
        random_rows = sorted((r for r in rows if r["mask"] == f"random:{lang}"), key=lambda r: r["repeat"])
        repeats = [r["repeat"] for r in random_rows]
        if len(set(repeats)) != len(repeats):
            raise AblationError(f"duplicate repeats {repeats} among 'random:{lang}' rows")

        def own_other(row):
            ratio = row["log_ppl_ratio"]
            other = [float(ratio[e]) for e in others]
            return float(ratio[lang]), other

        own, other = own_other(key_rows[0])
        other_mean = float(np.mean(other)) if other else math.nan
        rand_own, rand_spec = [], []
        for row in random_rows:
            o, oth = own_other(row)
            rand_own.append(o)
            rand_spec.append(o - float(np.mean(oth)) if oth else math.nan)
        rom, ros = _mean_sd(rand_own)
        rsm, rss = _mean_sd(rand_spec)
        out[lang] = {
            "own_log_ratio": own,
            "other_mean_log_ratio": other_mean,
            "other_median_log_ratio": float(np.median(other)) if other else math.nan,
            "specificity": own - other_mean,
            "random_own_log_ratio_mean": rom,
            "random_own_log_ratio_sd": ros,
            "random_specificity_mean": rsm,
            "random_specificity_sd": rss,
        }
    return out


def ablation_matrix(
    model: nn.Module,
    tokenizer,
    key_masks,
    languages: Sequence[str],
    eval_texts: Mapping[str, Sequence[str]],
    n_random: int = 3,
    seed: int = 0,
    token_budget: int = 4096,
    max_tokens: int = 512,
    exclude_mask: bool = False,
    device: torch.device | str | None = None,
) -> dict:
    """The whole ablation of one checkpoint, in-process.

    Intact, key and control masks are all evaluated here, on the same model object in
    the same dtype, so every ratio compares like with like.

    Args:
        key_masks: bool (K, L, F). languages: K names. eval_texts: {eval_lang: held-out texts}.

    Returns:
        {"eval_languages": [...], "rows": [...], "specificity": {...}} (see docs/ablation.md).
    """
    key_masks = _as_bool_array(key_masks, "key_masks")
    if key_masks.ndim == 3 and key_masks.shape[0] > 0:
        check_mask(model, key_masks[0])  # fail on a foreign mask before any forward
    eval_languages = list(eval_texts)
    plan = plan_masks(key_masks, languages, n_random, seed, exclude_mask)
    ppl: dict[str, dict[str, float]] = {}
    for spec in plan:
        if not spec.needs_eval:
            continue
        ppl[spec.id] = {}
        for lang in eval_languages:  # one call per (mask, language): the resumable unit
            ppl[spec.id].update(
                evaluate_mask(model, tokenizer, spec.mask, {lang: eval_texts[lang]}, token_budget, max_tokens, device)
            )
    rows = rows_from_ppl(plan, ppl, eval_languages)
    return {
        "eval_languages": eval_languages,
        "rows": rows,
        "specificity": summarise_ablation(rows, languages, eval_languages),
    }
