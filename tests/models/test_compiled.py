"""model.compile: the hook-free parts compiled by inductor give the eager numbers (float rounding), the
capture hooks still fire, and a compiler failure falls back to eager with one warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lingua_ray.ablation import evaluate_mask
from lingua_ray.capture import capture_texts
from lingua_ray.config import CaptureConfig
from lingua_ray.models.compiled import compile_hook_free, is_compile_error, with_fallback
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer

TEXTS = ["the sun and the sea", "a tree", "wind over the hill and the rock", "moon"]
CFG = CaptureConfig(token_budget=64, max_tokens=32, statistics=["mean", "act_pos_frac"])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


def _pair(kind="llama"):
    eager = tiny_model(kind, seed=3)
    other = tiny_model(kind, seed=3)
    return eager, other, tiny_tokenizer()


def test_compiled_capture_and_ablation_equal_eager():
    eager, model, tok = _pair()
    parts = compile_hook_free(model)
    assert parts and all(p._compiled_call_impl is not None for p in parts)
    assert not any("mlp" in n and "act_fn" not in n for n, m in model.named_modules() if m in parts)
    want = capture_texts(eager, tok, TEXTS, CFG)
    got = with_fallback(parts, lambda: capture_texts(model, tok, TEXTS, CFG))
    assert parts  # no fallback happened: the compiled model ran
    for name in want.stats:
        np.testing.assert_allclose(got.stats[name], want.stats[name], rtol=1e-5, atol=1e-6)
    L, F = want.stats["mean"].shape[1:]
    mask = np.zeros((L, F), bool)
    mask[:, ::3] = True
    ppl = with_fallback(parts, lambda: evaluate_mask(model, tok, mask, {"en": TEXTS}, 64, 32)["en"])
    assert ppl == pytest.approx(evaluate_mask(eager, tok, mask, {"en": TEXTS}, 64, 32)["en"], rel=1e-5)


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(caplog):
    eager, model, tok = _pair()
    parts = compile_hook_free(model, backend=_broken_backend)
    want = capture_texts(eager, tok, TEXTS, CFG)
    with caplog.at_level(logging.WARNING, logger="lingua_ray.models.compiled"):
        got = with_fallback(parts, lambda: capture_texts(model, tok, TEXTS, CFG), "recording en")
        again = with_fallback(parts, lambda: capture_texts(model, tok, TEXTS, CFG), "recording en")
    warnings = [r.getMessage() for r in caplog.records if r.name == "lingua_ray.models.compiled"]
    assert len(warnings) == 1 and "torch.compile failed recording en" in warnings[0]
    assert "no C++ compiler here" in warnings[0] and "running eager" in warnings[0]
    assert parts == [] and all(m._compiled_call_impl is None for m in model.modules())
    for out in (got, again):
        np.testing.assert_array_equal(out.stats["mean"], want.stats["mean"])


def test_errors_that_are_not_the_compilers_are_not_swallowed():
    _, model, _ = _pair()
    parts = compile_hook_free(model, backend=_broken_backend)

    def fail():
        raise ValueError("corpus.languages: 'xx' unknown")

    with pytest.raises(ValueError, match="xx"):
        with_fallback(parts, fail)
    assert parts and not is_compile_error(ValueError("x"))
