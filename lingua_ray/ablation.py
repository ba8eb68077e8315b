"""Deactivating FFN neurons and measuring held-out perplexity (METHOD.md, "Deactivation").

A mask is a bool array (L, F): layer × neuron, True = deactivate. The neurons are
zeroed at the capture point, the input u[layer] of each layer's FFN
down-projection, by a forward pre-hook that writes zeros in the input's own dtype.
Perplexity (``unit_nll``, ``perplexity``: ``lingua_ray.perplexity``, re-exported) is
corpus-level and token-weighted: exp(Σ nll / Σ predicted tokens), with the
log-softmax taken in float32 whatever the model's dtype.

The evaluation unit is one mask × one evaluation language: ``evaluate_mask`` with a
one-language ``eval_texts``. ``plan_masks`` lists the masks of one checkpoint (the
intact model, each language's key set, R matched random controls per language),
``rows_from_ppl`` turns the per-unit perplexities into result rows, and
``summarise_ablation`` (from ``lingua_ray.specificity``, re-exported) reduces rows to
per-language specificity. ``ablation_matrix`` composes the three in-process; a scheduler
can run the units anywhere and reuse the other two unchanged. The zero hooks and their
fired check live in ``lingua_ray.hooks``.

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

from lingua_ray.hooks import HookSet, hook_count, zero_neurons
from lingua_ray.models.adapters import get_adapter
from lingua_ray.perplexity import perplexity, unit_nll
from lingua_ray.specificity import AblationError, summarise_ablation

__all__ = [
    "AblationError", "MaskSpec", "ablation_matrix", "check_mask", "deactivate", "down_projection_hook_count",
    "evaluate_mask", "expected_mask_shape", "language_seed", "matched_random_masks", "perplexity", "plan_masks",
    "rows_from_ppl", "summarise_ablation", "unit_nll",
]


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


@contextmanager
def deactivate(model: nn.Module, mask) -> Iterator[HookSet]:
    """Zero the masked FFN neurons of ``model`` while the context is open.

    Args:
        model: a ``*ForCausalLM`` (or decoder body) with an adapter.
        mask: bool (L, F), ndarray or tensor; True = deactivate neuron (layer, k).

    Yields:
        the ``lingua_ray.hooks.HookSet``: ``.layers`` hooked, ``.calls`` per layer,
        ``.silent_layers()`` / ``.check_fired()`` (raises AblationError).

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
    with zero_neurons(model, mask, error=AblationError) as hooks:
        yield hooks


def down_projection_hook_count(model: nn.Module) -> int:
    """Forward pre-hooks currently on the model's down-projections (any owner)."""
    return hook_count(model)


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


# --------------------------------------------------------------------------- perplexity under a mask


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
    with deactivate(model, mask) as hooks:
        for lang, texts in eval_texts.items():
            mark = hooks.mark()
            out[lang] = perplexity(*unit_nll(model, tokenizer, texts, token_budget, max_tokens, device))
            hooks.check_fired(mark, during=f"while evaluating {lang!r}")
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
