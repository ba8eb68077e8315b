"""lingua_ray.ablation: masks as hooks, matched random controls, perplexity, the ablation matrix."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lingua_ray import specificity
from lingua_ray.ablation import (
    AblationError,
    ablation_matrix,
    deactivate,
    down_projection_hook_count,
    evaluate_mask,
    expected_mask_shape,
    language_seed,
    matched_random_masks,
    perplexity,
    plan_masks,
    rows_from_ppl,
    summarise_ablation,
    unit_nll,
)
from lingua_ray.models.adapters import get_adapter
from tiny import TINY_TYPES, tiny_model, tiny_tokenizer

TEXTS = ["the quick brown fox", "a", "jumps over", "", "the lazy dog sleeps all day long", "zz top", "hi"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


_MODELS: dict[str, torch.nn.Module] = {}


def model_of(model_type: str):
    """Shared tiny model per type; tests must leave it as they found it (hooks are checked)."""
    if model_type not in _MODELS:
        _MODELS[model_type] = tiny_model(model_type)
    return _MODELS[model_type]


def ids_of(tok, text):
    return torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])


def logits_of(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def random_mask(model, p: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(expected_mask_shape(model)) < p


def no_pad_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer with BOS/EOS but no pad token, to check the caller's tokenizer is not mutated."""
    words = [f"w{i}" for i in range(250)]
    vocab = {"[UNK]": 0, "<bos>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", unk_token="[UNK]")


# --------------------------------------------------------------------------- deactivate: against hand-built forwards


def test_whole_layer_zeroed_equals_zero_mlp_llama(tok):
    model = model_of("llama")
    L, F = expected_mask_shape(model)
    x = ids_of(tok, TEXTS[4])
    for layer in range(L):
        mask = np.zeros((L, F), bool)
        mask[layer] = True
        ref = copy.deepcopy(model)
        # LLaMA's down_proj has no bias: zero input => the whole MLP output is zero.
        ref.model.layers[layer].mlp.forward = lambda h: torch.zeros_like(h)
        with deactivate(model, mask):
            got = logits_of(model, x)
        torch.testing.assert_close(got, logits_of(ref, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, logits_of(model, x), atol=1e-4)  # the ablation did something


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_whole_layer_zeroed_leaves_down_proj_bias(tok, model_type):
    model = copy.deepcopy(model_of(model_type))
    adapter = get_adapter(model)
    downs = adapter.down_projections(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for d in downs:
            d.bias.normal_(0, 0.5)  # tiny.py leaves biases at zero, which would make this trivial
    L, F = expected_mask_shape(model)
    x = ids_of(tok, TEXTS[0])
    layer = 1
    mask = np.zeros((L, F), bool)
    mask[layer] = True
    ref = copy.deepcopy(model)
    bias = adapter.down_projections(ref)[layer].bias
    adapter.layer_modules(ref)[layer].mlp.forward = lambda h: bias.expand(*h.shape[:-1], bias.shape[0])
    with deactivate(model, mask):
        got = logits_of(model, x)
    torch.testing.assert_close(got, logits_of(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_partial_mask_equals_zeroed_weight_columns(tok, model_type):
    """Zeroing input neuron k of the down-projection = zeroing the weights that read neuron k."""
    model = model_of(model_type)
    mask = random_mask(model, 0.3, seed=7)
    assert mask.any() and not mask.all()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, d in enumerate(get_adapter(ref).down_projections(ref)):
            keep = torch.from_numpy(~mask[layer]).float()
            if isinstance(d, torch.nn.Linear):  # weight (out, F)
                d.weight.mul_(keep[None, :])
            else:  # GPT-2 Conv1D: weight (F, out)
                d.weight.mul_(keep[:, None])
    x = ids_of(tok, TEXTS[4])
    with deactivate(model, mask) as state:
        got = logits_of(model, x)
    assert state.layers == [i for i in range(mask.shape[0]) if mask[i].any()]
    assert all(n == 1 for n in state.calls.values())
    torch.testing.assert_close(got, logits_of(ref, x), rtol=1e-5, atol=1e-5)
    assert down_projection_hook_count(model) == 0


@pytest.mark.parametrize("model_type", ["llama", "bloom", "gpt2", "gemma3_text"])
def test_empty_mask_reproduces_intact_logits_exactly(tok, model_type):
    model = model_of(model_type)
    x = ids_of(tok, TEXTS[0])
    intact = logits_of(model, x)
    with deactivate(model, np.zeros(expected_mask_shape(model), bool)) as state:
        assert state.layers == [] and down_projection_hook_count(model) == 0
        got = logits_of(model, x)
    assert torch.equal(got, intact)


def test_zeroes_in_model_dtype(tok):
    model = copy.deepcopy(model_of("llama")).to(torch.bfloat16)
    mask = random_mask(model, 0.25, seed=3)
    seen = []

    def probe(module, args):  # registered after ours, so it sees the ablated input
        seen.append(args[0])

    down = get_adapter(model).down_projections(model)[0]
    with deactivate(model, mask):
        handle = down.register_forward_pre_hook(probe)
        try:
            logits_of(model, ids_of(tok, TEXTS[0]))
        finally:
            handle.remove()
    (u,) = seen
    assert u.dtype == torch.bfloat16
    assert torch.all(u[..., torch.from_numpy(mask[0])] == 0)
    assert torch.any(u[..., torch.from_numpy(~mask[0])] != 0)


# --------------------------------------------------------------------------- hook hygiene


def test_hooks_removed_after_exception_and_foreign_hooks_kept(tok):
    model = model_of("gpt2")
    downs = get_adapter(model).down_projections(model)
    foreign_calls = []
    foreign = downs[0].register_forward_pre_hook(lambda m, a: foreign_calls.append(1))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with deactivate(model, np.ones(expected_mask_shape(model), bool)):
                assert down_projection_hook_count(model) == 1 + len(downs)
                raise RuntimeError("boom")
        assert down_projection_hook_count(model) == 1
        logits_of(model, ids_of(tok, "hi"))
        assert foreign_calls == [1]  # removal was by handle, not by clearing the module's hooks
    finally:
        foreign.remove()
    assert down_projection_hook_count(model) == 0


def test_hooks_removed_after_each_evaluation(tok):
    model = model_of("llama")
    mask = random_mask(model, 0.2, seed=0)
    evaluate_mask(model, tok, mask, {"en": TEXTS})
    assert down_projection_hook_count(model) == 0
    ablation_matrix(model, tok, mask[None], ["en"], {"en": TEXTS[:3], "fr": TEXTS[3:]}, n_random=1)
    assert down_projection_hook_count(model) == 0


def test_evaluate_mask_raises_when_hooks_never_fire(tok):
    """The authors' defect: an ablation that silently does nothing. Here the MLP bypasses down_proj."""
    model = copy.deepcopy(model_of("llama"))
    model.model.layers[1].mlp.forward = lambda h: torch.zeros_like(h)
    mask = np.zeros(expected_mask_shape(model), bool)
    mask[1, :3] = True
    with pytest.raises(AblationError, match=r"layers \[1\] never ran"):
        evaluate_mask(model, tok, mask, {"en": TEXTS})
    assert down_projection_hook_count(model) == 0


# --------------------------------------------------------------------------- bad masks


def test_wrong_shape_mask_names_expected_and_got():
    llama, gpt2 = model_of("llama"), model_of("gpt2")
    foreign = np.zeros(expected_mask_shape(gpt2), bool)
    with pytest.raises(AblationError) as err:
        with deactivate(llama, foreign):
            pass
    msg = str(err.value)
    assert "(2, 40)" in msg and "(2, 24)" in msg and "'llama'" in msg
    with pytest.raises(AblationError, match="bool"):
        with deactivate(llama, np.zeros(expected_mask_shape(llama), np.float32)):
            pass
    with pytest.raises(AblationError, match="expected"):
        ablation_matrix(llama, None, foreign[None], ["en"], {"en": ["x"]})
    assert down_projection_hook_count(llama) == 0


def test_accepts_torch_mask(tok):
    model = model_of("llama")
    mask = random_mask(model, 0.3, seed=2)
    x = ids_of(tok, TEXTS[0])
    with deactivate(model, mask):
        a = logits_of(model, x)
    with deactivate(model, torch.from_numpy(mask)):
        b = logits_of(model, x)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- matched random control


@settings(max_examples=30, deadline=None)
@given(
    L=st.integers(1, 4), F=st.integers(1, 30), p=st.floats(0, 1), seed=st.integers(0, 2**31), R=st.integers(1, 4)
)
def test_random_masks_match_per_layer_counts(L, F, p, seed, R):
    mask = np.random.default_rng(seed).random((L, F)) < p
    out = matched_random_masks(mask, R, seed)
    assert out.shape == (R, L, F) and out.dtype == np.bool_
    np.testing.assert_array_equal(out.sum(axis=2), np.broadcast_to(mask.sum(axis=1), (R, L)))
    if 2 * mask.sum(axis=1).max() <= F:
        ex = matched_random_masks(mask, R, seed, exclude_mask=True)
        np.testing.assert_array_equal(ex.sum(axis=2), np.broadcast_to(mask.sum(axis=1), (R, L)))
        assert not np.any(ex & mask[None])


def test_random_masks_reproducible_and_distinct():
    mask = np.zeros((3, 50), bool)
    mask[0, :5] = mask[2, 10:30] = True
    a = matched_random_masks(mask, 4, seed=11)
    np.testing.assert_array_equal(a, matched_random_masks(mask, 4, seed=11))
    # repeat r depends on (seed, r) only, not on how many repeats were asked for
    np.testing.assert_array_equal(a[2], matched_random_masks(mask, 3, seed=11)[2])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a, matched_random_masks(mask, 4, seed=12))
    assert not np.array_equal(a[0], mask)
    assert language_seed(0, "en") != language_seed(0, "fr")


def test_random_masks_uniform_within_layer():
    mask = np.zeros((1, 10), bool)
    mask[0, :3] = True
    freq = matched_random_masks(mask, 3000, seed=0).mean(axis=0)[0]
    np.testing.assert_allclose(freq, 0.3, atol=0.04)  # sd of each frequency ≈ 0.008


def test_exclude_mask_too_large_errors():
    mask = np.zeros((2, 10), bool)
    mask[1, :6] = True
    with pytest.raises(AblationError, match="layer 1 has 6 key neurons of 10"):
        matched_random_masks(mask, 1, 0, exclude_mask=True)
    assert matched_random_masks(mask, 1, 0).sum() == 6


# --------------------------------------------------------------------------- perplexity


def naive_nll(model, tok, text, max_tokens=512):
    """One text, one position at a time, float64 log-softmax: straight from the definition."""
    ids = tok(text, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    if len(ids) < 2:
        return 0.0, 0
    logits = logits_of(model, torch.tensor([ids]))[0].double()
    total = 0.0
    for t in range(len(ids) - 1):
        total -= torch.log_softmax(logits[t], dim=-1)[ids[t + 1]].item()
    return total, len(ids) - 1


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bloom", "gemma3_text", "gpt_neox"])
def test_batched_nll_equals_one_at_a_time_and_naive(tok, model_type):
    model = model_of(model_type)
    nll, n = unit_nll(model, tok, TEXTS, token_budget=40)  # small budget: several padded batches
    assert nll.dtype == np.float64 and n.dtype == np.int64
    for i, text in enumerate(TEXTS):
        one_nll, one_n = unit_nll(model, tok, [text])
        ref_nll, ref_n = naive_nll(model, tok, text)
        assert n[i] == one_n[0] == ref_n
        np.testing.assert_allclose(nll[i], one_nll[0], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(nll[i], ref_nll, rtol=1e-5, atol=1e-9)


def test_nll_counts_and_truncation(tok):
    model = model_of("llama")
    nll, n = unit_nll(model, tok, ["abc", "", "abcdefghij"], max_tokens=6)
    # BOS + one token per byte; every token after the first is predicted; truncated to 6 tokens.
    np.testing.assert_array_equal(n, [3, 0, 5])
    assert nll[1] == 0.0 and nll[0] > 0 and nll[2] > 0
    assert unit_nll(model, tok, [])[0].shape == (0,)


def test_tokenizer_without_pad_is_not_mutated():
    tok = no_pad_tokenizer()
    assert tok.pad_token is None
    model = model_of("llama")
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9"]
    nll, n = unit_nll(model, tok, texts, token_budget=8)
    assert tok.pad_token is None and tok.padding_side == "right"
    np.testing.assert_array_equal(n, [3, 1, 5])
    for i, t in enumerate(texts):
        np.testing.assert_allclose(nll[i], naive_nll(model, tok, t)[0], rtol=1e-5)


def test_perplexity_is_token_weighted():
    nll = np.array([2.0, 9.0, 0.0])
    n = np.array([2, 3, 0])
    assert perplexity(nll, n) == pytest.approx(math.exp(11 / 5))
    with pytest.raises(AblationError, match="no predicted tokens"):
        perplexity(np.zeros(2), np.zeros(2, int))


def test_training_mode_refused(tok):
    model = copy.deepcopy(model_of("llama")).train()
    with pytest.raises(AblationError, match="eval"):
        unit_nll(model, tok, ["abc"])


# --------------------------------------------------------------------------- the matrix and its summary


def test_ablation_matrix_schema_and_consistency(tok):
    model = model_of("llama")
    L, F = expected_mask_shape(model)
    key = np.zeros((3, L, F), bool)
    key[0, 0] = True  # "en": all of layer 0
    key[1, 1, :5] = True  # "fr": five neurons of layer 1
    # "de": empty key set
    eval_texts = {"en": TEXTS[:3], "fr": TEXTS[3:5], "de": TEXTS[5:]}
    res = ablation_matrix(model, tok, key, ["en", "fr", "de"], eval_texts, n_random=2, seed=5, token_budget=64)
    assert res["eval_languages"] == ["en", "fr", "de"]
    rows = res["rows"]
    assert [(r["mask"], r["repeat"]) for r in rows] == [("none", None)] + [
        x for l in ["en", "fr", "de"] for x in [(f"key:{l}", None), (f"random:{l}", 0), (f"random:{l}", 1)]
    ]
    for r in rows:
        assert set(r) == {"mask", "language", "repeat", "n_neurons", "ppl", "log_ppl_ratio"}
        assert set(r["ppl"]) == set(r["log_ppl_ratio"]) == set(eval_texts)
    none = rows[0]
    assert none["language"] is None and none["n_neurons"] == 0
    assert all(v == 0.0 for v in none["log_ppl_ratio"].values())
    intact = evaluate_mask(model, tok, None, eval_texts)
    assert none["ppl"] == pytest.approx(intact, rel=1e-12)

    by = {(r["mask"], r["repeat"]): r for r in rows}
    assert by[("key:en", None)]["n_neurons"] == F and by[("random:en", 1)]["n_neurons"] == F
    assert by[("key:fr", None)]["n_neurons"] == 5 and by[("random:fr", 0)]["n_neurons"] == 5
    for k in [("key:de", None), ("random:de", 0), ("random:de", 1)]:
        assert by[k]["n_neurons"] == 0
        assert all(v == 0.0 for v in by[k]["log_ppl_ratio"].values())
    # a whole layer zeroed changes perplexity (hooks were live during evaluation), and the
    # row equals a direct evaluation of that mask
    key_en = by[("key:en", None)]
    assert all(abs(v) > 1e-6 for v in key_en["log_ppl_ratio"].values())
    assert key_en["ppl"] == pytest.approx(evaluate_mask(model, tok, key[0], eval_texts), rel=1e-12)
    for e, v in key_en["log_ppl_ratio"].items():
        assert v == pytest.approx(math.log(key_en["ppl"][e] / intact[e]), rel=1e-9)
    # the random rows are the planned matched controls
    plan = plan_masks(key, ["en", "fr", "de"], n_random=2, seed=5)
    rand_fr = next(s for s in plan if s.id == "random:fr:1")
    assert by[("random:fr", 1)]["ppl"] == pytest.approx(evaluate_mask(model, tok, rand_fr.mask, eval_texts), rel=1e-12)
    np.testing.assert_array_equal(
        rand_fr.mask, matched_random_masks(key[1], 2, language_seed(5, "fr"))[1]
    )
    assert res["specificity"] == summarise_ablation(rows, ["en", "fr", "de"], ["en", "fr", "de"])
    assert res["specificity"]["de"]["specificity"] == 0.0
    assert res["specificity"]["de"]["random_specificity_sd"] == 0.0
    assert down_projection_hook_count(model) == 0


def test_rows_from_ppl_needs_every_unit():
    key = np.zeros((1, 2, 4), bool)
    key[0, 0, 1] = True
    plan = plan_masks(key, ["en"], n_random=1)
    ppl = {"none": {"en": 2.0}, "key:en": {"en": 4.0}}
    with pytest.raises(AblationError, match="random:en:0"):
        rows_from_ppl(plan, ppl, ["en"])
    ppl["random:en:0"] = {"en": 3.0}
    rows = rows_from_ppl(plan, ppl, ["en"])
    assert rows[1]["log_ppl_ratio"]["en"] == pytest.approx(math.log(2.0))


def _row(mask, lang, rep, ratios):
    return {"mask": mask, "language": lang, "repeat": rep, "n_neurons": 1,
            "ppl": {e: math.exp(v) for e, v in ratios.items()}, "log_ppl_ratio": ratios}


def test_summarise_ablation_is_the_specificity_one():
    assert summarise_ablation is specificity.summarise_ablation
    assert AblationError is specificity.AblationError


def test_summarise_ablation_hand_example():
    ev = ["a", "b", "c", "d"]
    rows = [
        _row("none", None, None, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}),
        _row("key:a", "a", None, {"a": 3.0, "b": 1.0, "c": 0.0, "d": 5.0}),
        _row("random:a", "a", 1, {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.4}),
        _row("random:a", "a", 0, {"a": 0.2, "b": 0.0, "c": 0.4, "d": 0.2}),
        _row("key:b", "b", None, {"a": 0.0, "b": 2.0, "c": 4.0, "d": 2.0}),
        _row("random:b", "b", 0, {"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.0}),
    ]
    s = summarise_ablation(rows, ["a", "b"], ev)
    a = s["a"]
    assert a["own_log_ratio"] == 3.0
    assert a["other_mean_log_ratio"] == pytest.approx(2.0)  # mean of 1, 0, 5
    assert a["other_median_log_ratio"] == pytest.approx(1.0)
    assert a["specificity"] == pytest.approx(1.0)  # own − mean, not − median
    assert a["random_own_log_ratio_mean"] == pytest.approx(0.35)
    assert a["random_own_log_ratio_sd"] == pytest.approx(math.sqrt((0.15**2 + 0.15**2) / 1))  # ddof = 1
    # random specificities: repeat 0: 0.2 − 0.2 = 0.0; repeat 1: 0.5 − 0.3 = 0.2
    assert a["random_specificity_mean"] == pytest.approx(0.1)
    assert a["random_specificity_sd"] == pytest.approx(math.sqrt(2 * 0.1**2))
    b = s["b"]
    assert b["other_mean_log_ratio"] == pytest.approx(2.0) and b["specificity"] == pytest.approx(0.0)
    assert b["random_own_log_ratio_mean"] == 1.0 and math.isnan(b["random_own_log_ratio_sd"])  # R = 1: no spread
    assert b["random_specificity_mean"] == pytest.approx(0.0) and math.isnan(b["random_specificity_sd"])
    with pytest.raises(AblationError, match="not among the eval languages"):
        summarise_ablation(rows, ["a", "z"], ev)
    with pytest.raises(AblationError, match="one 'key:a' row"):
        summarise_ablation(rows + [rows[1]], ["a"], ev)
